"""Inverse-curvature solvers: u ≈ A⁻¹ b for a symmetric operator given as a matvec.

A solver is a frozen (hashable) dataclass called as ``solver(matvec, b) -> (x, SolverInfo)``
where ``matvec(w) = H w`` maps a pytree to a pytree of the same structure and dtypes and
``b`` is such a pytree. Every solver runs a fixed number of matvecs (``lax.fori_loop`` with
static bounds, so it jits, vmaps and is reverse-differentiable) and reports

* ``residual``: ‖A x − b‖ / ‖b‖ for the operator A the solver inverts (computed with one
  extra matvec; 0 when b = 0),
* ``iterations``: number of matvec iterations that changed the solution (int32),
* ``finite``: True when x and the residual are all finite.

The operator A is H for ``identity`` (whose residual says how far H is from I), H for
``neumann(scale="ift")``, αH for ``neumann(scale="original")`` (its u is 1/α times larger),
H + damping·I for ``cg`` and H + ρ·I for ``nystrom``.
"""
from __future__ import annotations

import dataclasses
import numbers
from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp
from jax.flatten_util import ravel_pytree

from autodo_jax._src.implicit import tree as T

PyTree = Any
Matvec = Callable[[PyTree], PyTree]
NEUMANN_SCALES = ("ift", "original")


class SolverInfo(NamedTuple):
    """Diagnostics of one solve (all scalar arrays).

    Attributes:
      residual: relative residual ‖A x − b‖/‖b‖ of the solver's operator A (accumulation dtype).
      iterations: int32 number of effective iterations (matvecs that updated x).
      finite: bool, True when the solution and residual are all finite.
    """

    residual: jax.Array
    iterations: jax.Array
    finite: jax.Array


def _check_count(name: str, value: Any, minimum: int) -> None:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"`{name}` must be a Python int >= {minimum}, got {value!r}")
    if value < minimum:
        raise ValueError(f"`{name}` must be an int >= {minimum}, got {value}")


def _check_real(name: str, value: Any, *, positive: bool) -> None:
    if isinstance(value, bool) or not isinstance(value, (numbers.Real, jax.Array)):
        raise TypeError(f"`{name}` must be a real number, got {value!r}")
    if isinstance(value, numbers.Real):
        if positive and not value > 0:
            raise ValueError(f"`{name}` must be > 0, got {value}")
        if not positive and not value >= 0:
            raise ValueError(f"`{name}` must be >= 0, got {value}")


def _finish(operator: Matvec, x: PyTree, b: PyTree, iterations: Any) -> tuple[PyTree, SolverInfo]:
    residual = T.relative(T.norm(T.sub(operator(x), b)), T.norm(b))
    info = SolverInfo(
        residual=residual,
        iterations=jnp.asarray(iterations, jnp.int32),
        finite=T.all_finite(x) & jnp.isfinite(residual),
    )
    return x, info


@dataclasses.dataclass(frozen=True)
class Identity:
    """u = b: the first-order (T1-T2) approximation H⁻¹ ≈ I. Built by :func:`identity`."""

    def __call__(self, matvec: Matvec, b: PyTree) -> tuple[PyTree, SolverInfo]:
        return _finish(matvec, b, b, 0)


@dataclasses.dataclass(frozen=True)
class Neumann:
    """Truncated Neumann series. Built by :func:`neumann`; see there."""

    iters: int = 5
    alpha: float = 0.01
    scale: str = "ift"

    def __post_init__(self):
        _check_count("iters", self.iters, 0)
        _check_real("alpha", self.alpha, positive=True)
        if self.scale not in NEUMANN_SCALES:
            raise ValueError(f"`scale` must be one of {NEUMANN_SCALES}, got {self.scale!r}")

    @property
    def prefactor(self):
        """Factor c in u = c · Σ_j (I − αH)^j b (α for "ift", 1 for "original")."""
        return self.alpha if self.scale == "ift" else 1.0

    def __call__(self, matvec: Matvec, b: PyTree) -> tuple[PyTree, SolverInfo]:
        alpha = self.alpha

        def body(_, carry):
            p, total = carry
            p = T.sub(p, T.scale(alpha, matvec(p)))  # same op order as the original's loop
            return p, T.add(total, p)

        _, series = jax.lax.fori_loop(0, self.iters, body, (b, b))
        if self.scale == "original":
            return _finish(lambda w: T.scale(alpha, matvec(w)), series, b, self.iters)
        return _finish(matvec, T.scale(alpha, series), b, self.iters)


@dataclasses.dataclass(frozen=True)
class CG:
    """Conjugate gradients on H + damping·I. Built by :func:`cg`; see there."""

    iters: int = 20
    damping: float = 0.0

    def __post_init__(self):
        _check_count("iters", self.iters, 0)
        _check_real("damping", self.damping, positive=False)

    def __call__(self, matvec: Matvec, b: PyTree) -> tuple[PyTree, SolverInfo]:
        damping = self.damping
        operator = (lambda w: T.axpy(damping, w, matvec(w))) if damping != 0 else matvec
        b_norm = T.norm(b)
        unit_b = T.scale(T.relative(jnp.ones_like(b_norm), b_norm), b)
        rs0 = T.vdot(unit_b, unit_b)
        zero = jnp.zeros_like(rs0)

        def body(_, carry):
            x, r, p, rs, done, count = carry
            ap = operator(p)
            pap = T.vdot(p, ap)
            ok = ~done & (pap > 0) & (rs > 0) & jnp.isfinite(pap)
            step = jnp.where(ok, rs / jnp.where(ok, pap, 1), zero)
            x = T.axpy(step, p, x)
            r = T.axpy(-step, ap, r)
            rs_new = T.vdot(r, r)
            beta = jnp.where(ok, rs_new / jnp.where(ok, rs, 1), zero)
            p = T.select(ok, T.axpy(beta, p, r), p)
            rs = jnp.where(ok, rs_new, rs)
            return x, r, p, rs, done | ~ok, count + ok.astype(jnp.int32)

        x0 = jax.tree_util.tree_map(jnp.zeros_like, unit_b)
        init = (x0, unit_b, unit_b, rs0, jnp.array(False), jnp.array(0, jnp.int32))
        x, _, _, _, _, count = jax.lax.fori_loop(0, self.iters, body, init)
        return _finish(operator, T.scale(b_norm, x), b, count)


@dataclasses.dataclass(frozen=True, eq=False)
class Nystrom:
    """Randomised Nyström approximation of H + ρI. Built by :func:`nystrom`; see there."""

    rank: int
    rho: float
    key: jax.Array

    def __post_init__(self):
        _check_count("rank", self.rank, 1)
        _check_real("rho", self.rho, positive=True)
        if not isinstance(self.key, jax.Array):
            raise TypeError(f"`key` must be a jax.random key array, got {type(self.key).__name__}")

    def __call__(self, matvec: Matvec, b: PyTree) -> tuple[PyTree, SolverInfo]:
        dt = T.acc_dtype(b)
        flat_b, unravel = ravel_pytree(b)
        flat_b = flat_b.astype(dt)
        omega = jax.random.normal(self.key, (self.rank, flat_b.size), dt)
        sketch = jax.vmap(lambda w: ravel_pytree(matvec(unravel(w)))[0].astype(dt))(omega)
        core = omega @ sketch.T
        core = 0.5 * (core + core.T)
        evals, evecs = jnp.linalg.eigh(core)
        keep = evals > jnp.finfo(dt).eps * self.rank * jnp.max(jnp.abs(evals))
        inv_sqrt = jnp.where(keep, jax.lax.rsqrt(jnp.where(keep, evals, 1)), 0)
        factor = sketch.T @ (evecs * inv_sqrt)  # H ≈ factor @ factor.T, shape (P, rank)
        basis, svals, _ = jnp.linalg.svd(factor, full_matrices=False)
        coef = basis.T @ flat_b
        flat_x = basis @ (coef / (svals**2 + self.rho)) + (flat_b - basis @ coef) / self.rho
        x = jax.tree_util.tree_map(lambda xi, bi: xi.astype(bi.dtype), unravel(flat_x), b)
        rho = self.rho
        return _finish(lambda w: T.axpy(rho, w, matvec(w)), x, b, self.rank)


def identity() -> Identity:
    """First-order solver u = b (H⁻¹ ≈ I): the cheapest hypergradient, no curvature used."""
    return Identity()


def neumann(iters: int = 5, alpha: float = 0.01, scale: str = "ift") -> Neumann:
    """Truncated Neumann series for H⁻¹ b (AutoDO's solver), ``iters`` = J matvecs.

    The series S = Σ_{j=0..J} (I − αH)^j b is accumulated exactly as the original code
    does (p = b; S = b; repeat J times: p = p − αHp; S = S + p).

    Args:
      iters: J >= 0 (J = 0 gives S = b).
      alpha: step α > 0; the series converges to H⁻¹b/α when 0 < α λ(H) < 2.
      scale: "ift" returns u = α·S ≈ H⁻¹ b, the exact implicit-function-theorem scale
        (default); "original" returns u = S like the original AutoDO code, i.e. 1/α times
        the IFT hypergradient (irrelevant under RMSprop up to its eps).
    """
    return Neumann(iters, alpha, scale)


def cg(iters: int = 20, damping: float = 0.0) -> CG:
    """Conjugate gradients for (H + damping·I) x = b, ``iters`` matvecs.

    b is normalised to unit norm before solving and the solution rescaled after (no
    float32 underflow). Iterations stop updating (the last iterate is kept) as soon as a
    search direction has pᵀAp <= 0 (indefinite or singular curvature) or the residual
    is exactly 0; ``info.iterations`` counts the effective ones.
    """
    return CG(iters, damping)


def nystrom(rank: int, rho: float, key: jax.Array) -> Nystrom:
    """Randomised Nyström solver for (H + ρI) x = b with a Gaussian sketch of ``rank`` columns.

    Y = HΩ (``rank`` matvecs, batched with vmap), Ĥ = Y (ΩᵀY)⁺ Yᵀ (eigenvalues of ΩᵀY
    that are not clearly positive are dropped, so Ĥ is PSD), and x = (Ĥ + ρI)⁻¹ b by its
    thin SVD (Woodbury). Exact for SPD H when ``rank`` >= the number of parameters.
    Materialises the (P, rank) sketch, P = number of parameters.

    Args:
      rank: sketch size k >= 1.
      rho: regularisation ρ > 0 added to the approximate curvature.
      key: ``jax.random`` key for the sketch.
    """
    return Nystrom(rank, rho, key)
