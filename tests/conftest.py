"""Test configuration, set before JAX initialises.

- 8 forced host CPU devices: multi-device code paths (row-sharded tables, sharded steps)
  run on these simulated devices.
- Compilation dominates the suite (tiny shapes, many programs), so:
  * XLA compiles with ``jax_disable_most_optimizations`` (about 40 % less compile time;
    the same programs, numerics equal up to float rounding). ``AUTODO_TEST_XLA_OPTIMIZE=1``
    compiles as in production; a test that inspects optimised HLO uses the
    ``xla_optimized`` fixture.
  * JAX's persistent compilation cache is on, in ``.pytest_cache/d/jax_compilation_cache``
    (or ``$TMPDIR/autodo_jax_test_jax_cache`` without pytest's cache provider); a second
    run reuses the compiled programs. ``AUTODO_TEST_JAX_CACHE=DIR`` picks another
    directory, ``AUTODO_TEST_JAX_CACHE=`` (empty) turns it off. Subprocesses started by
    tests inherit both settings through the environment.
- ``compile_counts``: a fixture counting XLA compilations by function name.
- Tests marked ``slow`` (end-to-end training runs, several processes) are deselected unless
  ``--slow`` is given (CI and the README's test command give it) or ``-m`` chooses markers
  itself; the summary line counts them as "deselected", never as passed.

Tests that need float64 enable it locally with ``jax.experimental.enable_x64`` or
``jax.config.update`` inside the test.
"""
import collections
import os
import tempfile

os.environ.setdefault("JAX_PLATFORMS", "cpu")
_flags = os.environ.get("XLA_FLAGS", "")
if "xla_force_host_platform_device_count" not in _flags:
    os.environ["XLA_FLAGS"] = (_flags + " --xla_force_host_platform_device_count=8").strip()
if not os.environ.get("AUTODO_TEST_XLA_OPTIMIZE"):
    os.environ["JAX_DISABLE_MOST_OPTIMIZATIONS"] = "1"

import jax  # noqa: E402  (must come after the environment is set)
import pytest  # noqa: E402

jax.config.update("jax_num_cpu_devices", 8)

#: The event JAX records once per XLA compilation (a persistent-cache hit included).
BACKEND_COMPILE_EVENT = "/jax/core/compile/backend_compile_duration"
_CACHE_ENV = {
    "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS": "0.1",
    "JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES": "0",
}


def _cache_dir(config: pytest.Config) -> str:
    chosen = os.environ.get("AUTODO_TEST_JAX_CACHE")
    if chosen is not None:
        return chosen
    cache = getattr(config, "cache", None)  # None with -p no:cacheprovider
    if cache is not None:
        return str(cache.mkdir("jax_compilation_cache"))
    return os.path.join(tempfile.gettempdir(), "autodo_jax_test_jax_cache")


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption("--slow", action="store_true", default=False,
                     help="also run the tests marked slow (end-to-end runs; CI runs them)")


def pytest_collection_modifyitems(config: pytest.Config, items: list) -> None:
    if config.getoption("--slow") or config.getoption("markexpr"):
        return
    slow = [item for item in items if item.get_closest_marker("slow")]
    if slow:
        config.hook.pytest_deselected(items=slow)
        items[:] = [item for item in items if not item.get_closest_marker("slow")]


def pytest_configure(config: pytest.Config) -> None:
    path = _cache_dir(config)
    if not path:
        return
    os.makedirs(path, exist_ok=True)
    os.environ["JAX_COMPILATION_CACHE_DIR"] = path
    for name, value in _CACHE_ENV.items():
        os.environ.setdefault(name, value)
    jax.config.update("jax_compilation_cache_dir", path)
    jax.config.update("jax_persistent_cache_min_compile_time_secs",
                      float(os.environ["JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS"]))
    jax.config.update("jax_persistent_cache_min_entry_size_bytes",
                      int(os.environ["JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES"]))


@pytest.fixture
def xla_optimized():
    """Compiles with XLA's optimisations inside the test (restored afterwards)."""
    old = jax.config.read("jax_disable_most_optimizations")
    jax.config.update("jax_disable_most_optimizations", False)
    yield
    jax.config.update("jax_disable_most_optimizations", old)


@pytest.fixture
def compile_counts():
    """A ``collections.Counter`` of XLA compilations by function name (e.g.
    ``"jit(inner_step)"``) made while the test runs."""
    counts = collections.Counter()

    def listener(event: str, duration: float, **kwargs) -> None:
        del duration
        if event == BACKEND_COMPILE_EVENT:
            counts[kwargs.get("fun_name", "?")] += 1

    jax.monitoring.register_event_duration_secs_listener(listener)
    yield counts
    jax.monitoring.unregister_event_duration_listener(listener)
