"""Implicit-function-theorem hypergradients: ``hypergrad`` and its inverse-curvature solvers.

Pure functions over arbitrary pytrees; imports nothing else from ``autodo_jax``.

    >>> grads, info = hypergrad(train_loss, val_loss, params, hparams, tb, vb,
    ...                         solver=cg(20), curvature="hessian")

See :func:`hypergrad` for the sign and scale conventions, and the solver builders
:func:`identity`, :func:`neumann`, :func:`cg`, :func:`nystrom`.
"""
from autodo_jax._src.implicit.curvature import CURVATURES, MODES
from autodo_jax._src.implicit.hypergrad import HypergradInfo, hypergrad
from autodo_jax._src.implicit.solvers import (
    CG,
    NEUMANN_SCALES,
    Identity,
    Neumann,
    Nystrom,
    SolverInfo,
    cg,
    identity,
    neumann,
    nystrom,
)

__all__ = [
    "CG",
    "CURVATURES",
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
]
