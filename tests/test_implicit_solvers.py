"""Inverse-curvature solvers of autodo_jax.implicit against dense solves."""
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.flatten_util import ravel_pytree

from autodo_jax import implicit
from autodo_jax.implicit import SolverInfo, cg, identity, neumann, nystrom


def _spd(n, seed, low=0.1, high=10.0):
    rng = np.random.default_rng(seed)
    q, _ = np.linalg.qr(rng.normal(size=(n, n)))
    eig = np.geomspace(low, high, n)
    return (q * eig) @ q.T, rng.normal(size=n)


@functools.partial(jax.jit, static_argnums=0)
def _run(solver, a, b):
    """solver on the dense operator a (compiled once per solver, shape and dtype)."""
    return solver(lambda w: a @ w, b)


def _rel(a, b):
    return float(np.linalg.norm(np.asarray(a, np.float64) - b) / np.linalg.norm(b))


class _MixedScaleCG:
    """A defective CG (as found in two PyTorch libraries): step length from the scaled
    operator c·A, residual updated with the unscaled A, result multiplied by c. Kept here
    only to show that the dense-solve check below catches it."""

    def __init__(self, iters, c):
        self.iters, self.c = iters, c

    def __call__(self, matvec, b):
        x, r = jnp.zeros_like(b), b
        p, rs = r, r @ r
        for _ in range(self.iters):
            ap = matvec(p)
            step = rs / (p @ (self.c * ap))
            x, r = x + step * p, r - step * ap
            rs_new = r @ r
            p, rs = r + rs_new / rs * p, rs_new
        return self.c * x, None


def _cg_error(solver, a, b, dtype):
    run = (lambda s, m, v: s(lambda w: m @ w, v)) if isinstance(solver, _MixedScaleCG) else _run
    x, _ = run(solver, jnp.asarray(a, dtype), jnp.asarray(b, dtype))
    return _rel(x, np.linalg.solve(a, b))


@pytest.mark.parametrize("dtype,iters,tol", [(jnp.float32, 40, 2e-4), (jnp.float64, 40, 1e-9)])
@pytest.mark.parametrize("scale", [0.1, 1.0, 10.0])
def test_cg_matches_dense_solve(dtype, iters, tol, scale):
    with jax.enable_x64(dtype == jnp.float64):
        a, b = _spd(20, seed=int(10 * scale))
        a = scale * a
        assert _cg_error(cg(iters, tol=0.0), a, b, dtype) < tol
        assert _cg_error(cg(5), a, b, dtype) > tol  # truncation is visible, not hidden
        # damping solves (A + d I) x = b
        x, info = _run(cg(iters, damping=0.3, tol=0.0), jnp.asarray(a, dtype), jnp.asarray(b, dtype))
        assert _rel(x, np.linalg.solve(a + 0.3 * np.eye(20), b)) < tol
        assert float(info.residual) < 10 * tol and bool(info.finite)


def test_mixed_scale_cg_fails_the_dense_check():
    with jax.enable_x64(True):
        a, b = _spd(20, seed=3)
        for c in (0.1, 10.0):  # the defective CG solves c·A: must fail at these scales
            assert _cg_error(_MixedScaleCG(40, c), c * a, b, jnp.float64) > 0.1
            assert _cg_error(cg(40, tol=0.0), c * a, b, jnp.float64) < 1e-9


@pytest.mark.parametrize("iters", [0, 1, 7, 200])
@pytest.mark.parametrize("dtype", [jnp.float32, jnp.float64])
def test_neumann_matches_dense_series(iters, dtype):
    with jax.enable_x64(dtype == jnp.float64):
        a, b = _spd(12, seed=iters, low=0.5, high=5.0)
        alpha = 0.15
        m = np.eye(12) - alpha * a
        series = sum(np.linalg.matrix_power(m, j) @ b for j in range(iters + 1))
        ad, bd = jnp.asarray(a, dtype), jnp.asarray(b, dtype)
        tol = 1e-5 if dtype == jnp.float32 else 1e-12
        x, info = _run(neumann(iters, alpha, scale="original"), ad, bd)
        assert _rel(x, series) < tol and int(info.iterations) == iters
        x_ift, info_ift = _run(neumann(iters, alpha, scale="ift"), ad, bd)
        assert _rel(x_ift, alpha * series) < tol
        # relative residual of the solver's operator: αA for "original", A for "ift"
        assert abs(float(info.residual) - _rel(alpha * a @ series, b)) < 10 * tol
        assert abs(float(info_ift.residual) - _rel(alpha * a @ series, b)) < 10 * tol
        if iters == 200:  # converged: the IFT scale is A⁻¹ b
            assert _rel(x_ift, np.linalg.solve(a, b)) < 1e-6


@pytest.mark.parametrize("iters", [0, 5])
def test_neumann_bit_for_bit_with_original_loop_float32(iters):
    a, b = _spd(40, seed=11)
    a, b = jnp.asarray(a, jnp.float32), jnp.asarray(b, jnp.float32)
    alpha = 0.01
    matvec = lambda w: a @ w

    def original(v):  # the original AutoDO loop, without the α prefactor
        p, u = v, v
        for _ in range(iters):
            p = p - alpha * matvec(p)
            u = u + p
        return u

    with jax.disable_jit():  # op by op, like the original's eager PyTorch loop
        x, _ = neumann(iters, alpha, scale="original")(matvec, b)
        x_ift, _ = neumann(iters, alpha, scale="ift")(matvec, b)
        expected = original(b)
        assert np.array_equal(x, expected)
        assert np.array_equal(x_ift, alpha * expected)
    # compiled: both compiled the same way (XLA may fuse p - α·Hp into one multiply-add)
    x_jit, _ = jax.jit(lambda v: neumann(iters, alpha, scale="original")(matvec, v))(b)
    assert np.array_equal(x_jit, jax.jit(original)(b))


@pytest.mark.parametrize("dtype,tol", [(jnp.float32, 1e-3), (jnp.float64, 1e-9)])
def test_nystrom_full_rank_matches_regularised_dense_solve(dtype, tol):
    rho = 0.3
    with jax.enable_x64(dtype == jnp.float64):
        a, b = _spd(10, seed=5, low=0.5, high=5.0)
        x, info = _run(nystrom(10, rho, jax.random.key(0)), jnp.asarray(a, dtype),
                       jnp.asarray(b, dtype))
        assert _rel(x, np.linalg.solve(a + rho * np.eye(10), b)) < tol
        assert float(info.residual) < tol and int(info.iterations) == 10


def test_nystrom_low_rank_reports_its_true_residual():
    with jax.enable_x64(True):
        a, b = _spd(30, seed=6)
        x, info = _run(nystrom(8, 0.5, jax.random.key(1)), jnp.asarray(a), jnp.asarray(b))
        true = _rel((a + 0.5 * np.eye(30)) @ np.asarray(x), b)
        assert abs(float(info.residual) - true) < 1e-10 and true > 1e-3


def test_identity_returns_b_and_reports_distance_from_identity():
    with jax.enable_x64(True):
        a, b = _spd(8, seed=2)
        x, info = _run(identity(), jnp.asarray(a), jnp.asarray(b))
        np.testing.assert_array_equal(x, b)
        assert abs(float(info.residual) - _rel(a @ b, b)) < 1e-12
        assert int(info.iterations) == 0


def _tree_operator(a, example):
    """Dense SPD operator acting on a pytree through its raveled vector."""
    _, unravel = ravel_pytree(example)
    return lambda t: unravel(jnp.asarray(a) @ ravel_pytree(t)[0])


@pytest.mark.parametrize("solver", [cg(30), neumann(400, 0.1), nystrom(9, 1e-3, jax.random.key(2))])
def test_solvers_on_pytrees_with_mixed_shapes(solver):
    with jax.enable_x64(True):
        b = {"m": jnp.arange(6.0).reshape(2, 3) - 2.0, "s": jnp.array(1.5),
             "e": jnp.zeros((0,)), "v": jnp.array([0.5, -1.0])}
        a, _ = _spd(9, seed=9, low=0.5, high=5.0)
        x, info = jax.jit(lambda rhs: solver(_tree_operator(a, b), rhs))(b)
        assert jax.tree_util.tree_structure(x) == jax.tree_util.tree_structure(b)
        expected = np.linalg.solve(a + 1e-3 * np.eye(9) * isinstance(solver, implicit.Nystrom),
                                   ravel_pytree(b)[0])
        assert _rel(ravel_pytree(x)[0], expected) < 1e-6 and bool(info.finite)


def test_bfloat16_solve_keeps_dtype_and_is_close():
    a, b = _spd(16, seed=4, low=0.5, high=2.0)
    ab, bb = jnp.asarray(a, jnp.bfloat16), jnp.asarray(b, jnp.bfloat16)
    for solver in (cg(16), neumann(60, 0.3), nystrom(16, 1e-2, jax.random.key(0))):
        x, info = _run(solver, ab, bb)
        assert x.dtype == jnp.bfloat16 and info.residual.dtype == jnp.float32
        assert _rel(x, np.linalg.solve(a, b)) < 0.08 and bool(info.finite)


def test_zero_rhs_and_nonfinite_are_reported():
    a, _ = _spd(5, seed=0)
    a = jnp.asarray(a, jnp.float32)
    for solver in (identity(), neumann(), cg(5), nystrom(3, 0.1, jax.random.key(0))):
        x, info = _run(solver, a, jnp.zeros(5))
        assert np.all(np.asarray(x) == 0) and float(info.residual) == 0 and bool(info.finite)
        _, info = _run(solver, a, jnp.array([1.0, np.nan, 0, 0, 0]))
        assert not bool(info.finite)


def test_cg_stops_on_indefinite_curvature():
    a = np.diag([1.0, -1.0, 2.0])
    b = np.array([1.0, 1.0, 1.0])
    x, info = _run(cg(10), jnp.asarray(a, jnp.float32), jnp.asarray(b, jnp.float32))
    assert bool(info.finite) and int(info.iterations) < 10
    assert np.all(np.isfinite(np.asarray(x)))


def test_solvers_jit_vmap_and_grad():
    a, b = _spd(6, seed=8, low=0.5, high=3.0)
    a = jnp.asarray(a, jnp.float32)
    bs = jnp.stack([jnp.asarray(b, jnp.float32), -2.0 * jnp.asarray(b, jnp.float32)])
    solve = lambda rhs: cg(6)(lambda w: a @ w, rhs)
    xs, infos = jax.jit(jax.vmap(solve))(bs)
    np.testing.assert_allclose(xs[1], -2.0 * xs[0], rtol=1e-5)
    assert infos.residual.shape == (2,) and infos.finite.all()
    # d/db of <c, A⁻¹ b> = A⁻¹ c (A symmetric)
    c = jnp.arange(6.0)
    grad = jax.grad(lambda rhs: solve(rhs)[0] @ c)(bs[0])
    np.testing.assert_allclose(grad, np.linalg.solve(np.asarray(a), np.asarray(c)), rtol=1e-3)


def test_solver_argument_errors():
    with pytest.raises(ValueError, match="iters"):
        neumann(-1)
    with pytest.raises(ValueError, match="iters"):
        cg(-2)
    with pytest.raises(TypeError, match="iters"):
        neumann(2.5)
    with pytest.raises(ValueError, match="alpha"):
        neumann(5, 0.0)
    with pytest.raises(ValueError, match="scale.*'ift', 'original'"):
        neumann(5, 0.01, scale="exact")
    with pytest.raises(ValueError, match="damping"):
        cg(5, damping=-1.0)
    with pytest.raises(ValueError, match="rank"):
        nystrom(0, 0.1, jax.random.key(0))
    with pytest.raises(ValueError, match="rho"):
        nystrom(3, 0.0, jax.random.key(0))
    with pytest.raises(TypeError, match="key"):
        nystrom(3, 0.1, 0)
    assert isinstance(identity()(lambda w: w, jnp.ones(2))[1], SolverInfo)


def test_cg_stays_converged_far_past_convergence_float32():
    a, b = _spd(31, seed=0, low=0.1, high=10.0)  # condition number 100
    x, info = _run(cg(620, tol=0.0), jnp.asarray(a, jnp.float32), jnp.asarray(b, jnp.float32))
    assert _rel(x, np.linalg.solve(a, b)) < 1e-4 and bool(info.finite)
    assert int(info.iterations) < 620  # stopped at rounding level, and says so


def test_cg_tolerance_stops_early_and_counts_honestly():
    with jax.enable_x64(True):
        a, b = _spd(40, seed=11, low=0.1, high=10.0)
        exact = np.linalg.solve(a, b)
        counts = []
        for tol in (1e-3, 1e-6, 1e-10):
            x, info = _run(cg(1000, tol=tol), jnp.asarray(a), jnp.asarray(b))
            counts.append(int(info.iterations))
            assert float(info.residual) <= 1.01 * tol  # the true residual meets the tolerance
            assert _rel(x, exact) <= 100 * tol  # error <= condition number × tol
        assert counts[0] < counts[1] < counts[2] < 1000
        _, info = _run(cg(counts[2] - 1, tol=1e-10), jnp.asarray(a), jnp.asarray(b))
        assert int(info.iterations) == counts[2] - 1 and float(info.residual) > 1e-10


def test_grad_through_converged_cg_is_finite_and_exact():
    d = jnp.array([1.0, 2.0, 3.0, 4.0, 5.0])
    for solver in (cg(10, tol=0.0), cg(10)):
        solve = lambda v, scale: solver(lambda w: scale * d * w, v)[0]
        g_b = jax.grad(lambda v: jnp.sum(solve(v, 1.0)))(jnp.ones(5))
        np.testing.assert_allclose(g_b, 1 / d, rtol=1e-5)
        # through the operator: d/ds Σ (s·D)⁻¹ 1 = −Σ 1/(s² d)
        g_s = jax.grad(lambda s: jnp.sum(solve(jnp.ones(5), s)))(1.0)
        np.testing.assert_allclose(g_s, -np.sum(1 / np.asarray(d)), rtol=1e-5)


def test_cg_damping_may_be_traced():
    a, b = _spd(6, seed=8, low=0.5, high=3.0)
    am, bm = jnp.asarray(a, jnp.float32), jnp.asarray(b, jnp.float32)
    dampings = jnp.array([0.0, 0.5, 2.0])
    xs = jax.jit(jax.vmap(lambda d: cg(50, d, tol=1e-7)(lambda w: am @ w, bm)[0]))(dampings)
    for x, d in zip(xs, np.asarray(dampings)):
        assert _rel(x, np.linalg.solve(a + d * np.eye(6), b)) < 1e-4
    grad = jax.grad(lambda d: jnp.sum(cg(50, d, tol=1e-7)(lambda w: am @ w, bm)[0]))(0.5)
    # d/dd Σ (A + dI)⁻¹ b = −Σ (A + dI)⁻² b
    inv = np.linalg.inv(a + 0.5 * np.eye(6))
    np.testing.assert_allclose(grad, -np.sum(inv @ inv @ b), rtol=1e-3)


def test_neumann_auto_alpha_converges_and_tol_stops():
    with jax.enable_x64(True):
        a, b = _spd(20, seed=12, low=0.5, high=20.0)
        lam = float(implicit.power_max_eigenvalue(lambda w: jnp.asarray(a) @ w,
                                                  jnp.asarray(b), 50))
        assert 0.9 * 20.0 < lam <= 20.0 * (1 + 1e-9)  # from below, close
        x, info = _run(neumann(5000, "auto", tol=1e-9), jnp.asarray(a), jnp.asarray(b))
        assert _rel(x, np.linalg.solve(a, b)) < 1e-6 and int(info.iterations) < 5000
        x_fixed, info_fixed = _run(neumann(5, 0.01), jnp.asarray(a), jnp.asarray(b))
        assert int(info_fixed.iterations) == 5 and float(info_fixed.residual) > 0.5
    with pytest.raises(ValueError, match='alpha.*"auto"'):
        neumann(5, "fast")


def test_nystrom_bfloat16_params_and_tiny_rho_at_full_rank():
    a, b = _spd(31, seed=0, low=0.1, high=10.0)
    x, info = _run(nystrom(31, 1e-2, jax.random.key(0)), jnp.asarray(a, jnp.bfloat16),
                   jnp.asarray(b, jnp.bfloat16))
    assert x.dtype == jnp.bfloat16 and bool(info.finite)
    assert _rel(x, np.linalg.solve(a + 1e-2 * np.eye(31), b)) < 0.1
    for rank in (31, 40):  # at rank >= P the solve is the dense one, whatever ρ
        x, info = _run(nystrom(rank, 1e-8, jax.random.key(1)), jnp.asarray(a, jnp.float32),
                       jnp.asarray(b, jnp.float32))
        assert _rel(x, np.linalg.solve(a, b)) < 1e-3 and int(info.iterations) == 31
