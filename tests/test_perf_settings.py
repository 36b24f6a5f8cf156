"""Run-speed settings of experiments.train: compilation cache, dispatch and worker defaults."""
import jax

from experiments import pipes
from experiments.train import enable_compilation_cache


def test_compilation_cache_flag(tmp_path):
    keys = ("jax_compilation_cache_dir", "jax_persistent_cache_min_compile_time_secs",
            "jax_compilation_cache_max_size")
    old = {k: getattr(jax.config, k) for k in keys}
    try:
        enable_compilation_cache("")
        assert {k: getattr(jax.config, k) for k in keys} == old   # '' leaves it off
        enable_compilation_cache(str(tmp_path / "xla"))
        assert getattr(jax.config, "jax_compilation_cache_dir") == str(tmp_path / "xla")
        assert getattr(jax.config, "jax_compilation_cache_max_size") == 4 << 30
    finally:
        for k, v in old.items():
            jax.config.update(k, v)


def test_dispatch_and_worker_defaults():
    assert pipes.default_steps_per_dispatch() == (1 if jax.default_backend() == "cpu" else 8)
    assert 1 <= pipes.default_data_workers() <= 8
