"""The library is light: what `import autodo_jax.implicit` loads, and what the package installs."""
import configparser
import os
import subprocess
import sys

import setuptools

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
HEAVY = ("flax", "optax", "tensorflow_datasets", "tensorflow", "orbax", "matplotlib",
         "tensorboardX", "autodo_jax.models", "autodo_jax.train", "autodo_jax.data")


def _loaded_after(statement):
    code = (f"{statement}\nimport sys\n"
            f"print(' '.join(sorted(m for m in sys.modules if m.split('.')[0] in {HEAVY!r} "
            f"or m in {HEAVY!r})))")
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True,
                         text=True, check=True, env=dict(os.environ, JAX_PLATFORMS="cpu"))
    return out.stdout.split()


def test_implicit_imports_neither_flax_nor_the_models():
    assert _loaded_after("import autodo_jax.implicit") == []
    assert _loaded_after("from autodo_jax import hypergrad, stationary_point, cg") == []
    # the rooms still load on first use, by name
    assert "flax" in _loaded_after("import autodo_jax; autodo_jax.models.get_model")


def test_package_installs_the_library_alone_with_light_requirements():
    cfg = configparser.ConfigParser()
    cfg.read(os.path.join(REPO, "setup.cfg"))
    include = cfg["options.packages.find"]["include"].split()
    found = setuptools.find_packages(REPO, include=include)
    assert "autodo_jax" in found and "autodo_jax.models" in found
    assert not [p for p in found if p.split(".")[0] != "autodo_jax"]  # no bare `experiments`
    core = [r.split(">")[0].split("=")[0] for r in cfg["options"]["install_requires"].split()]
    assert sorted(core) == ["chex", "jax", "numpy", "optax"]
    extras = cfg["options.extras_require"]
    with open(os.path.join(REPO, "requirements.txt")) as f:
        required = {line.split(">")[0].split("=")[0].strip() for line in f
                    if line.strip() and not line.startswith("#")}
    for extra in ("models", "data", "experiments"):  # requirements.txt installs them all
        names = {r.split(">")[0].split("=")[0] for r in extras[extra].split()}
        assert names <= required, (extra, names - required)
