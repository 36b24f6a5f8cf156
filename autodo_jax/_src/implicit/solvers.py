"""Inverse-curvature solvers: u ≈ A⁻¹ b for a symmetric operator given as a matvec.

A solver is a frozen dataclass called as ``solver(matvec, b) -> (x, SolverInfo)`` where
``matvec(w) = H w`` maps a pytree to a pytree of the same structure and dtypes and ``b`` is
such a pytree. The iterative solvers (``cg``, ``neumann``) stop at a relative-residual
tolerance or a maximum count (``lax.while_loop``); they and ``nystrom`` are wrapped in
``lax.custom_linear_solve``, so reverse and forward mode through a solve differentiate the
linear system A x = b implicitly (one more solve with the same solver) instead of unrolling
the loop. Every solver reports

* ``residual``: ‖A x − b‖ / ‖b‖ for the operator A the solver inverts (computed with one
  extra matvec; 0 when b = 0, NaN when anything is NaN),
* ``iterations``: the number of matvecs that updated the solution (int32),
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


def check_count(name: str, value: Any, minimum: int) -> None:
    """Raise unless ``value`` is a Python int >= ``minimum`` (a static loop bound)."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"`{name}` must be a Python int >= {minimum}, got {value!r}")
    if value < minimum:
        raise ValueError(f"`{name}` must be an int >= {minimum}, got {value}")


def check_real(name: str, value: Any, *, positive: bool, traced: bool = True) -> None:
    """Raise unless ``value`` is a real number (> 0 or >= 0); arrays (traced values
    included) are accepted when ``traced`` and checked only when they are concrete."""
    allowed = (numbers.Real, jax.Array) if traced else numbers.Real
    if isinstance(value, bool) or not isinstance(value, allowed):
        kind = "a real number" if traced else "a Python float"
        raise TypeError(f"`{name}` must be {kind}, got {value!r}")
    if isinstance(value, numbers.Real):
        if positive and not value > 0:
            raise ValueError(f"`{name}` must be > 0, got {value}")
        if not positive and not value >= 0:
            raise ValueError(f"`{name}` must be >= 0, got {value}")


def finish(operator: Matvec, x: PyTree, b: PyTree, iterations: Any) -> tuple[PyTree, SolverInfo]:
    """(x, SolverInfo) with the true relative residual of ``operator`` at x (one matvec)."""
    residual = T.relative(T.norm(T.sub(operator(x), b)), T.norm(b))
    info = SolverInfo(
        residual=residual,
        iterations=jnp.asarray(iterations, jnp.int32),
        finite=T.all_finite(x) & jnp.isfinite(residual),
    )
    return x, info


def implicit_solve(operator: Matvec, b: PyTree,
                   solve: Callable[[Matvec, PyTree], tuple[PyTree, jax.Array]]) -> tuple[PyTree, SolverInfo]:
    """x = solve(operator, b) with derivatives by implicit differentiation of A x = b.

    ``solve(operator, b) -> (x, iterations)``; the operator is assumed symmetric, so the
    transposed solve (reverse mode) is ``solve`` again.
    """
    x, iterations = jax.lax.custom_linear_solve(operator, b, solve, symmetric=True,
                                                has_aux=True)
    return finish(operator, x, b, iterations)


def _accumulation_eps(b: PyTree) -> jax.Array:
    return jnp.asarray(jnp.finfo(T.acc_dtype(b)).eps, T.acc_dtype(b))


@dataclasses.dataclass(frozen=True)
class Identity:
    """u = b: the first-order (T1-T2) approximation H⁻¹ ≈ I. Built by :func:`identity`."""

    def __call__(self, matvec: Matvec, b: PyTree) -> tuple[PyTree, SolverInfo]:
        return finish(matvec, b, b, 0)


@dataclasses.dataclass(frozen=True)
class CG:
    """Conjugate gradients on H + damping·I. Built by :func:`cg`; see there."""

    iters: int = 100
    damping: Any = 0.0
    tol: float = 1e-6

    def __post_init__(self):
        check_count("iters", self.iters, 0)
        check_real("damping", self.damping, positive=False)
        check_real("tol", self.tol, positive=False, traced=False)

    def operator(self, matvec: Matvec) -> Matvec:
        """w ↦ (H + damping·I) w (the damping term is left out only for a literal 0)."""
        damping = self.damping
        if isinstance(damping, numbers.Real) and damping == 0:
            return matvec
        return lambda w: T.axpy(damping, w, matvec(w))

    def __call__(self, matvec: Matvec, b: PyTree) -> tuple[PyTree, SolverInfo]:
        return implicit_solve(self.operator(matvec), b, self._solve)

    def _solve(self, operator: Matvec, b: PyTree) -> tuple[PyTree, jax.Array]:
        b_norm = T.norm(b)
        unit_b = T.scale(T.relative(jnp.ones_like(b_norm), b_norm), b)  # no f32 underflow
        rs0 = T.vdot(unit_b, unit_b)  # 1, or 0 when b = 0
        eps = _accumulation_eps(b)
        # stop at the tolerance, and always once the residual is at rounding level: past
        # that point r and p are noise and further steps would only break the solution
        stop = jnp.maximum(jnp.asarray(self.tol, eps.dtype) ** 2, eps**2) * rs0

        def cond(carry):
            _, _, _, rs, count = carry
            return (count < self.iters) & (rs > stop)

        def body(carry):
            x, r, p, rs, count = carry
            ap = operator(p)
            pap = T.vdot(p, ap)
            ok = pap > 0  # False on indefinite or singular curvature and on NaN: stop there
            step = jnp.where(ok, rs / jnp.where(ok, pap, 1), 0)  # x keeps its last value
            x = T.axpy(step, p, x)
            r = T.axpy(-step, ap, r)
            rs_new = T.vdot(r, r)
            p = T.axpy(rs_new / rs, p, r)
            # rs = -1 ends the loop after a breakdown (r and p are then never used again)
            return x, r, p, jnp.where(ok, rs_new, -1), count + ok.astype(jnp.int32)

        x0 = jax.tree_util.tree_map(jnp.zeros_like, unit_b)
        init = (x0, unit_b, unit_b, rs0, jnp.array(0, jnp.int32))
        x, _, _, _, count = jax.lax.while_loop(cond, body, init)
        return T.scale(b_norm, x), count


def power_max_eigenvalue(matvec: Matvec, like: PyTree, iters: int) -> jax.Array:
    """Estimate of the largest |eigenvalue| of a symmetric operator: ‖H w‖ after ``iters``
    power iterations from a fixed pseudo-random unit pytree w shaped like ``like``.

    A lower bound that approaches λ_max from below (accumulation dtype scalar).
    """
    leaves, treedef = jax.tree_util.tree_flatten(like)
    key = jax.random.key(0)
    w = treedef.unflatten([jax.random.normal(jax.random.fold_in(key, i), jnp.shape(x), x.dtype)
                           for i, x in enumerate(leaves)])
    unit = lambda t: T.scale(T.relative(jnp.ones((), T.acc_dtype(t)), T.norm(t)), t)
    w = jax.lax.fori_loop(0, iters, lambda _, w: unit(matvec(w)), unit(w))
    return T.norm(matvec(w))


@dataclasses.dataclass(frozen=True)
class Neumann:
    """Truncated Neumann series. Built by :func:`neumann`; see there."""

    iters: int = 5
    alpha: float | str = 0.01
    scale: str = "ift"
    tol: float = 0.0
    power_iters: int = 20

    def __post_init__(self):
        check_count("iters", self.iters, 0)
        if self.alpha != "auto":
            if isinstance(self.alpha, str):
                raise ValueError(f'`alpha` must be a float > 0 or "auto", got {self.alpha!r}')
            check_real("alpha", self.alpha, positive=True, traced=False)
        if self.scale not in NEUMANN_SCALES:
            raise ValueError(f"`scale` must be one of {NEUMANN_SCALES}, got {self.scale!r}")
        check_real("tol", self.tol, positive=False, traced=False)
        check_count("power_iters", self.power_iters, 1)

    @property
    def prefactor(self) -> float:
        """Factor c in u = c · Σ_j (I − αH)^j b (α for "ift", 1 for "original"; fixed α)."""
        return self.alpha if self.scale == "ift" else 1.0

    def step_size(self, matvec: Matvec, b: PyTree) -> jax.Array | float:
        """α, or 1/λ_max from :func:`power_max_eigenvalue` for ``alpha="auto"``."""
        if self.alpha != "auto":
            return self.alpha
        lam = power_max_eigenvalue(matvec, b, self.power_iters)
        return T.relative(jnp.ones_like(lam), lam)

    def __call__(self, matvec: Matvec, b: PyTree) -> tuple[PyTree, SolverInfo]:
        if self.scale == "original":  # A = αH, solved with step 1: u = S
            alpha = self.step_size(matvec, b)
            return implicit_solve(lambda w: T.scale(alpha, matvec(w)), b,
                                  lambda op, rhs: self._series(op, rhs, 1.0))
        return implicit_solve(matvec, b,
                              lambda op, rhs: self._series(op, rhs, self.step_size(op, rhs)))

    def _series(self, operator: Matvec, b: PyTree, alpha: Any) -> tuple[PyTree, jax.Array]:
        """α_out · Σ_{j=0..J} (I − α·operator)^j b and J (α_out = α), stopping once the
        residual b − α·operator(S) = (I − α·operator)^{J+1} b (the next term, known for free)
        is below ``tol``·‖b‖."""
        threshold = self.tol * T.norm(b)

        def cond(carry):
            p, _, count = carry
            if self.tol == 0:  # the paper's fixed J
                return count < self.iters
            return (count < self.iters) & (T.norm(p) > threshold)

        def body(carry):
            p, total, count = carry
            p = T.sub(p, T.scale(alpha, operator(p)))  # same op order as the original's loop
            return p, T.add(total, p), count + 1

        _, series, count = jax.lax.while_loop(cond, body, (b, b, jnp.array(0, jnp.int32)))
        return T.scale(alpha, series), count


@dataclasses.dataclass(frozen=True, eq=False)
class Nystrom:
    """Randomised Nyström approximation of H + ρI. Built by :func:`nystrom`; see there."""

    rank: int
    rho: Any
    key: jax.Array

    def __post_init__(self):
        check_count("rank", self.rank, 1)
        check_real("rho", self.rho, positive=True)
        if not isinstance(self.key, jax.Array):
            raise TypeError(f"`key` must be a jax.random key array, got {type(self.key).__name__}")

    def __call__(self, matvec: Matvec, b: PyTree) -> tuple[PyTree, SolverInfo]:
        rho = self.rho
        return implicit_solve(lambda w: T.axpy(rho, w, matvec(w)), b, self._solve)

    def _solve(self, operator: Matvec, b: PyTree) -> tuple[PyTree, jax.Array]:
        flat_b, unravel = ravel_pytree(b)
        size = flat_b.size
        if size == 0:
            return b, jnp.array(0, jnp.int32)
        dt = T.acc_dtype(b)
        rank = min(self.rank, size)
        omega, _ = jnp.linalg.qr(jax.random.normal(self.key, (size, rank), dt))
        omega = omega.astype(flat_b.dtype)  # the sketch runs in the params' dtype
        apply = lambda w: ravel_pytree(operator(unravel(w)))[0].astype(dt)
        sketch = jax.vmap(apply, in_axes=1, out_axes=1)(omega)  # A Ω, (P, rank)
        omega = omega.astype(dt)
        eps = jnp.finfo(dt).eps
        # the shift ν (Frangella, Tropp & Udell 2023) keeps Ωᵀ(AΩ + νΩ) well conditioned
        nu = jnp.sqrt(jnp.asarray(size, dt)) * eps * jnp.linalg.norm(sketch)
        shifted = sketch + nu * omega
        core = omega.T @ shifted
        evals, evecs = jnp.linalg.eigh(0.5 * (core + core.T))
        keep = evals > eps * rank * jnp.max(jnp.abs(evals))  # Â stays PSD
        inv_sqrt = jnp.where(keep, jax.lax.rsqrt(jnp.where(keep, evals, 1)), 0)
        basis, svals, _ = jnp.linalg.svd(shifted @ (evecs * inv_sqrt), full_matrices=False)
        rho = self.rho
        evals_a = jnp.maximum(svals**2 - nu, rho)  # eigenvalues of A = H + ρI are >= ρ
        coef = basis.T @ flat_b.astype(dt)
        flat_x = basis @ (coef / evals_a)
        if rank < size:  # directions outside the sketch see A as ρI
            flat_x = flat_x + (flat_b.astype(dt) - basis @ coef) / rho
        x = jax.tree_util.tree_map(lambda xi, bi: xi.astype(bi.dtype), unravel(
            flat_x.astype(flat_b.dtype)), b)
        return x, jnp.array(rank, jnp.int32)


SOLVER_CLASSES = (Identity, Neumann, CG, Nystrom)


def identity() -> Identity:
    """First-order solver u = b (H⁻¹ ≈ I): the cheapest hypergradient, no curvature used."""
    return Identity()


def neumann(iters: int = 5, alpha: float | str = 0.01, scale: str = "ift", *,
            tol: float = 0.0, power_iters: int = 20) -> Neumann:
    """Truncated Neumann series for H⁻¹ b (AutoDO's solver): at most ``iters`` = J matvecs.

    The series S = Σ_{j=0..J} (I − αH)^j b is accumulated exactly as the original code
    does (p = b; S = b; repeat J times: p = p − αHp; S = S + p). It converges to H⁻¹b/α
    only when 0 < α λ(H) < 2 for every eigenvalue λ of H (H positive definite), at the
    rate 1 − αλ_min per term: about ln(1/tol)·λ_max/λ_min terms with α = 1/λ_max. The
    defaults (J = 5, α = 0.01) are the paper's: with λ_max ≪ 100 they return nearly
    (J+1)·α·b, a scaled first-order step, not H⁻¹b. For an accurate solve prefer
    :func:`cg`, or use ``alpha="auto"`` with a large J and a ``tol``.

    Args:
      iters: J >= 0, the maximum number of terms (J = 0 gives S = b).
      alpha: step α > 0, or "auto": α = 1/λ̂_max with λ̂_max from ``power_iters`` power
        iterations on H (that many extra matvecs per solve; λ̂_max <= λ_max, so the series
        converges unless λ̂_max < λ_max/2).
      scale: "ift" returns u = α·S ≈ H⁻¹ b, the exact implicit-function-theorem scale
        (default); "original" returns u = S like the original AutoDO code, i.e. 1/α times
        the IFT hypergradient (irrelevant under RMSprop up to its eps).
      tol: stop once the relative residual ‖b − αH S‖/‖b‖ (the next term of the series,
        known without an extra matvec) is <= tol; 0 (default) always runs J terms.
      power_iters: power iterations for ``alpha="auto"``.
    """
    return Neumann(iters, alpha, scale, tol, power_iters)


def cg(iters: int = 100, damping: float | jax.Array = 0.0, tol: float = 1e-6) -> CG:
    """Conjugate gradients for (H + damping·I) x = b: at most ``iters`` matvecs.

    Stops when the relative residual ‖r‖/‖b‖ of the CG recursion is <= ``tol``, when it
    reaches rounding level (eps of the accumulation dtype; so ``tol=0`` runs to machine
    precision and no further, never breaking past convergence), or when a search direction
    has pᵀAp <= 0 (indefinite or singular curvature; the last iterate is kept).
    ``info.iterations`` counts the matvecs that updated x and ``info.residual`` is the true
    residual (one extra matvec). b is normalised to unit norm before solving and the
    solution rescaled after (no float32 underflow). The error is at most κ(A)·tol.

    Args:
      iters: maximum number of matvecs (a Python int >= 0).
      damping: added to the diagonal (>= 0); a float or an array, traced values included
        (under ``jit`` / ``vmap``).
      tol: relative-residual tolerance (a Python float >= 0).
    """
    return CG(iters, damping, tol)


DEFAULT_SOLVER: CG = cg()  # what hypergrad and stationary_point use unless told otherwise


def nystrom(rank: int, rho: float | jax.Array, key: jax.Array) -> Nystrom:
    """Randomised Nyström solver for (H + ρI) x = b with a Gaussian sketch of ``rank`` columns.

    With A = H + ρI and Ω an orthonormalised Gaussian (P, k) matrix (k = min(rank, P)):
    Y = AΩ (k matvecs, batched with vmap, in the params' dtype), shifted by ν = √P·eps·‖Y‖
    for stability; Â = Y_ν (ΩᵀY_ν)⁺ Y_νᵀ − νI on the sketched subspace (eigenvalues that are
    not clearly positive are dropped, so Â is PSD), and x = U diag(1/d) Uᵀ b + (b − UUᵀb)/ρ
    from the thin SVD of Â's factor (d = its eigenvalues, at least ρ). At k = P the
    complement term is empty and dropped: x is then the dense (H + ρI)⁻¹ b up to rounding,
    whatever ρ. At k < P, directions outside the sketch are divided by ρ, so the error grows
    as the part of b outside the sketch over ρ (use ``info.residual``). Materialises the
    (P, k) sketch, P = number of parameters; the linear algebra runs in float32 (float64
    for float64 parameters).

    Args:
      rank: sketch size k >= 1.
      rho: regularisation ρ > 0 added to the curvature (a float or an array).
      key: ``jax.random`` key for the sketch.
    """
    return Nystrom(rank, rho, key)
