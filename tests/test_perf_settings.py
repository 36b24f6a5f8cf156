"""Run-speed settings of experiments.train: compilation cache, dispatch and worker defaults."""
import json
import os
import subprocess
import sys

import jax

from experiments import pipes
from experiments.train import compilation_cache_problem, enable_compilation_cache

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CACHE_KEYS = ("jax_compilation_cache_dir", "jax_persistent_cache_min_compile_time_secs",
              "jax_persistent_cache_min_entry_size_bytes", "jax_compilation_cache_max_size")


def test_compilation_cache_flag(tmp_path):
    old = {k: getattr(jax.config, k) for k in CACHE_KEYS}
    try:
        assert not enable_compilation_cache("")
        assert {k: getattr(jax.config, k) for k in CACHE_KEYS} == old   # '' leaves it off
        assert enable_compilation_cache(str(tmp_path / "xla"))
        assert getattr(jax.config, "jax_compilation_cache_dir") == str(tmp_path / "xla")
        assert getattr(jax.config, "jax_compilation_cache_max_size") == 4 << 30
        assert getattr(jax.config, "jax_persistent_cache_min_compile_time_secs") == 0.0
    finally:
        for k, v in old.items():
            jax.config.update(k, v)


def test_an_unwritable_cache_is_one_warning_and_stays_off(tmp_path, capsys):
    blocker = tmp_path / "a_file"
    blocker.write_text("x")
    problem = compilation_cache_problem(str(blocker / "xla"))
    assert problem.startswith(f"cannot write to {blocker}/xla (")
    old = {k: getattr(jax.config, k) for k in CACHE_KEYS}
    assert not enable_compilation_cache(str(blocker / "xla"))
    assert {k: getattr(jax.config, k) for k in CACHE_KEYS} == old
    assert capsys.readouterr().err.splitlines() == [
        f"warning: --compilation_cache={blocker}/xla: {problem}; compiling without the "
        "persistent cache"]


#: A fresh process that turns the cache on as experiments.train does, compiles one
#: program and prints how many entries it read from and wrote to the cache.
_CACHE_PROBE = """
import json, sys
import jax, jax.numpy as jnp
from experiments.train import enable_compilation_cache
events = []
jax.monitoring.register_event_listener(lambda event, **kw: events.append(event))
assert enable_compilation_cache(sys.argv[1])
jax.block_until_ready(jax.jit(lambda x: jnp.sin(x) * 2.0 + 1.0)(jnp.arange(5.0)))
print(json.dumps({"read": events.count("/jax/compilation_cache/cache_hits"),
                  "written": events.count("/jax/compilation_cache/cache_misses")}))
"""


def test_the_persistent_cache_is_written_then_read(tmp_path):
    """Fails when the cache cannot be written (a package missing, such as filelock, or a
    JAX warning about the cache: warnings are errors here)."""
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("JAX_COMPILATION_CACHE", "JAX_PERSISTENT_CACHE"))}
    env.update(PYTHONPATH=REPO, JAX_PLATFORMS="cpu")

    def probe():
        p = subprocess.run([sys.executable, "-W", "error::UserWarning", "-c", _CACHE_PROBE,
                            str(tmp_path / "xla")], cwd=REPO, env=env, capture_output=True,
                           text=True, timeout=300)
        assert p.returncode == 0, p.stderr
        assert "warning" not in p.stderr.lower(), p.stderr
        return json.loads(p.stdout.splitlines()[-1])

    first = probe()
    assert first["read"] == 0 and first["written"] >= 1, first
    entries = [n for n in os.listdir(tmp_path / "xla") if n.endswith("-cache")]
    assert len(entries) == first["written"]
    # a second identical process compiles nothing: every program comes from the cache
    assert probe() == {"read": first["written"], "written": 0}


def test_dispatch_and_worker_defaults():
    assert pipes.default_steps_per_dispatch() == (1 if jax.default_backend() == "cpu" else 8)
    assert 1 <= pipes.default_data_workers() <= 8
