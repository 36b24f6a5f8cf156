"""Implicit-function-theorem hypergradients: ``hypergrad``, ``stationary_point`` and solvers.

Pure functions over arbitrary pytrees; imports nothing else from ``autodo_jax`` and
neither Flax nor the models (``import autodo_jax.implicit`` needs jax and chex only).

    >>> grads, info = hypergrad(train_loss, val_loss, params, hparams, tb, vb)
    >>> fit = stationary_point(train_loss)(my_inner_loop)  # jax.grad flows through fit

See :func:`hypergrad` for the sign and scale conventions, :func:`stationary_point` for
your own inner solver, and the solver builders :func:`cg` (the default), :func:`neumann`,
:func:`nystrom`, :func:`identity`; docs/solvers.md says which to choose.
"""
from autodo_jax._src.implicit.curvature import CURVATURES, MODES
from autodo_jax._src.implicit.hypergrad import HypergradInfo, hypergrad
from autodo_jax._src.implicit.root import stationary_point
from autodo_jax._src.implicit.solvers import (
    CG,
    DEFAULT_SOLVER,
    NEUMANN_SCALES,
    Identity,
    Neumann,
    Nystrom,
    SolverInfo,
    cg,
    identity,
    neumann,
    nystrom,
    power_max_eigenvalue,
)

__all__ = [
    "CG",
    "CURVATURES",
    "DEFAULT_SOLVER",
    "HypergradInfo",
    "Identity",
    "MODES",
    "NEUMANN_SCALES",
    "Neumann",
    "Nystrom",
    "SolverInfo",
    "cg",
    "hypergrad",
    "identity",
    "neumann",
    "nystrom",
    "power_max_eigenvalue",
    "stationary_point",
]
