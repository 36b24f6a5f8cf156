"""autodo_jax: AutoDO (Gudovskiy et al., CVPR 2021) in JAX.

Public API is re-exported here explicitly; see the submodules for details.
"""
__version__ = "0.1.0"
