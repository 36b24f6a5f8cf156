"""stationary_point: implicit differentiation of the user's own inner solver (float64)."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from autodo_jax import implicit


def _data(seed=0, n=40, d=5):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, d))
    y = x @ rng.normal(size=d) + 0.3 * rng.normal(size=n)
    xv = rng.normal(size=(n // 2, d))
    return (jnp.asarray(x), jnp.asarray(y)), (jnp.asarray(xv), jnp.asarray(xv @ np.ones(d)))


def ridge_loss(theta, log_l2, batch):
    x, y = batch
    return 0.5 * jnp.mean((x @ theta - y) ** 2) + 0.5 * jnp.sum(jnp.exp(log_l2) * theta**2)


def closed_form(log_l2, batch):  # θ* = (XᵀX/n + diag(e^λ))⁻¹ Xᵀy/n, differentiable
    x, y = batch
    return jnp.linalg.solve(x.T @ x / x.shape[0] + jnp.diag(jnp.exp(log_l2)), x.T @ y / x.shape[0])


@implicit.stationary_point(ridge_loss, solver=implicit.cg(200, tol=1e-13))
def gradient_descent(log_l2, batch):
    """A plain loop: 3000 steps of gradient descent, never differentiated."""
    step = lambda _, th: th - 0.2 * jax.grad(ridge_loss)(th, log_l2, batch)
    return jax.lax.fori_loop(0, 3000, step, jnp.zeros(batch[0].shape[1], batch[0].dtype))


def val_loss(theta, batch):
    x, y = batch
    return 0.5 * jnp.mean((x @ theta - y) ** 2)


def test_gradient_matches_closed_form_under_jit_vmap_and_grad():
    with jax.enable_x64(True):
        train, val = _data()
        lam = jnp.linspace(-2.0, 0.5, 5)
        outer = lambda fit: (lambda l, b: val_loss(fit(l, b), val))
        ours, exact = outer(gradient_descent), outer(closed_form)
        np.testing.assert_allclose(gradient_descent(lam, train), closed_form(lam, train),
                                   rtol=1e-10)
        g = jax.jit(jax.grad(ours))(lam, train)
        np.testing.assert_allclose(g, jax.grad(exact)(lam, train), rtol=1e-8, atol=1e-12)
        lams = jnp.stack([lam, lam - 1.0, lam + 0.3])
        np.testing.assert_allclose(jax.jit(jax.vmap(jax.grad(ours), (0, None)))(lams, train),
                                   jax.vmap(jax.grad(exact), (0, None))(lams, train),
                                   rtol=1e-8, atol=1e-12)
        # with respect to the data too (a float leaf of args)
        gx = jax.grad(lambda b: ours(lam, b))(train)
        np.testing.assert_allclose(gx[0], jax.grad(lambda b: exact(lam, b))(train)[0],
                                   rtol=1e-7, atol=1e-12)
        # second order: grad of a function of the gradient
        h = jax.grad(lambda l: jnp.sum(jax.grad(ours)(l, train) ** 2))(lam)
        h_exact = jax.grad(lambda l: jnp.sum(jax.grad(exact)(l, train) ** 2))(lam)
        np.testing.assert_allclose(h, h_exact, rtol=1e-6, atol=1e-12)


def test_forward_mode_and_jacobians():
    with jax.enable_x64(True):
        train, _ = _data(seed=1)
        lam = jnp.full((5,), -1.0)
        tangent = jnp.arange(5.0) / 5
        _, jvp = jax.jvp(lambda l: gradient_descent(l, train), (lam,), (tangent,))
        _, jvp_exact = jax.jvp(lambda l: closed_form(l, train), (lam,), (tangent,))
        np.testing.assert_allclose(jvp, jvp_exact, rtol=1e-8, atol=1e-12)
        np.testing.assert_allclose(jax.jacfwd(gradient_descent)(lam, train),
                                   jax.jacrev(closed_form)(lam, train), rtol=1e-7, atol=1e-12)


def test_integer_args_and_gauss_newton():
    with jax.enable_x64(True):
        rng = np.random.default_rng(2)
        x = jnp.asarray(rng.normal(size=(30, 4)))
        labels = jnp.asarray(rng.integers(0, 2, size=30), jnp.int32)
        def loss(theta, lam, x, labels):  # logistic regression; labels are int32
            z = x @ theta
            return jnp.mean(jax.nn.softplus(z) - labels * z) + 0.5 * jnp.exp(lam) * theta @ theta
        def newton(lam, x, labels):
            step = lambda _, th: th - jnp.linalg.solve(jax.hessian(loss)(th, lam, x, labels),
                                                       jax.grad(loss)(th, lam, x, labels))
            return jax.lax.fori_loop(0, 30, step, jnp.zeros(4))
        outs = lambda th, lam, x, labels: (x @ th, th)
        out_loss = lambda o, lam, x, labels: (jnp.mean(jax.nn.softplus(o[0]) - labels * o[0])
                                              + 0.5 * jnp.exp(lam) * o[1] @ o[1])
        hess = implicit.stationary_point(loss, solver=implicit.cg(100, tol=1e-13))(newton)
        gn = implicit.stationary_point(loss, solver=implicit.cg(100, tol=1e-13),
                                       curvature="gauss_newton", train_outputs=outs,
                                       output_loss=out_loss)(newton)
        # reference: dθ*/dλ = −H⁻¹ ∂g/∂λ from dense matrices
        theta = newton(jnp.asarray(-1.0), x, labels)
        dg = jax.jacobian(jax.grad(loss), argnums=1)(theta, jnp.asarray(-1.0), x, labels)
        ref = -np.linalg.solve(jax.hessian(loss)(theta, jnp.asarray(-1.0), x, labels), dg)
        for fit in (hess, gn):  # GN equals the Hessian for a linear model under log-loss
            np.testing.assert_allclose(jax.jacrev(fit)(jnp.asarray(-1.0), x, labels), ref,
                                       rtol=1e-8, atol=1e-12)


def test_bad_use_is_named():
    with pytest.raises(ValueError, match="builder `cg` itself"):
        implicit.stationary_point(ridge_loss, solver=implicit.cg)
    with pytest.raises(ValueError, match="curvature"):
        implicit.stationary_point(ridge_loss, curvature="fisher")
    with pytest.raises(TypeError, match="decorates a function"):
        implicit.stationary_point(ridge_loss)(3)
    fit = implicit.stationary_point(lambda th, lam, b: jnp.ones(2))(lambda lam, b: jnp.zeros(2))
    with pytest.raises(ValueError, match="train_loss.*scalar"):
        jax.grad(lambda l: jnp.sum(fit(l, 0.0)))(1.0)
