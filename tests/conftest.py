"""Test configuration: 8 forced host CPU devices, set before JAX initialises.

Multi-device code paths (row-sharded tables, sharded steps) are exercised on these
simulated devices. Tests that need float64 enable it locally with
``jax.experimental.enable_x64`` or ``jax.config.update`` inside the test.
"""
import os

os.environ.setdefault("JAX_PLATFORMS", "cpu")
_flags = os.environ.get("XLA_FLAGS", "")
if "xla_force_host_platform_device_count" not in _flags:
    os.environ["XLA_FLAGS"] = (_flags + " --xla_force_host_platform_device_count=8").strip()

import jax  # noqa: E402  (must come after the environment is set)

jax.config.update("jax_num_cpu_devices", 8)
