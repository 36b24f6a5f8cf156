"""The package's public names resolve, and the library never imports experiments."""
import subprocess
import sys

import autodo_jax


def test_every_public_name_resolves():
    missing = [n for n in autodo_jax.__all__ if not hasattr(autodo_jax, n)]
    assert missing == []


def test_library_does_not_import_experiments():
    code = ("import sys, autodo_jax, autodo_jax.data; "
            "print(any(m == 'experiments' or m.startswith('experiments.') for m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
