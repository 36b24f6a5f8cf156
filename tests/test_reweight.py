"""L2RW and Meta-Weight-Net (autodo_jax.reweight) against closed forms, explicit
unrolled objectives and finite differences, in float64."""
import jax
import jax.flatten_util
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from autodo_jax import reweight as rw


@pytest.fixture
def x64():
    with jax.enable_x64(True):
        yield


def _linear_problem(seed=0, n=12, m=9, d=4):
    rng = np.random.default_rng(seed)
    x, xv = rng.normal(size=(n, d)), rng.normal(size=(m, d))
    truth = rng.normal(size=d)
    y, yv = x @ truth, xv @ truth
    y[n // 2:] *= -1                          # "noisy" targets: their gradients disagree
    theta = truth + 0.3 * rng.normal(size=d)
    return jnp.asarray(theta), (jnp.asarray(x), jnp.asarray(y)), (jnp.asarray(xv), jnp.asarray(yv))


def sq_per_example(theta, batch):
    x, y = batch
    return 0.5 * (x @ theta - y) ** 2


def sq_val(theta, batch):
    x, y = batch
    return jnp.mean(0.5 * (x @ theta - y) ** 2)


def test_l2rw_weights_equal_the_closed_form_on_a_linear_model(x64):
    theta, (x, y), (xv, yv) = _linear_problem()
    alpha = 0.3
    weights, info = jax.jit(rw.l2rw_weights, static_argnums=(0, 1))(
        sq_per_example, sq_val, theta, (x, y), (xv, yv), step_size=alpha)
    # closed form: L_val(θ − α Σ ε_i r_i x_i), so ∂L_val/∂ε_i = −α r_i x_iᵀ X_vᵀ r_v / M
    th, xn, yn, xvn, yvn = map(np.asarray, (theta, x, y, xv, yv))
    r, rv = xn @ th - yn, xvn @ th - yvn
    d_eps = -alpha * r * (xn @ (xvn.T @ rv / len(yvn)))
    assert weights.dtype == jnp.float64
    np.testing.assert_allclose(info.example_grads, d_eps, rtol=1e-10, atol=1e-14)
    plus = np.maximum(-d_eps, 0)
    assert 0 < (plus > 0).sum() < len(plus)          # the draw has both signs
    np.testing.assert_allclose(weights, plus / plus.sum(), rtol=1e-10, atol=1e-14)
    assert int(info.num_positive) == (plus > 0).sum() and bool(info.finite)
    np.testing.assert_allclose(info.val_loss, 0.5 * np.mean(rv ** 2), rtol=1e-12)
    # the normalised weights do not depend on the look-ahead step
    w1, _ = rw.l2rw_weights(sq_per_example, sq_val, theta, (x, y), (xv, yv), step_size=1.0)
    np.testing.assert_allclose(w1, weights, rtol=1e-10, atol=1e-14)


def test_lookahead_at_nonzero_weights_matches_the_closed_form(x64):
    theta, (x, y), (xv, yv) = _linear_problem(1)
    alpha = 0.2
    base = jnp.linspace(0.1, 1.0, x.shape[0])
    la = rw.lookahead(sq_per_example, sq_val, theta, (x, y), (xv, yv), step_size=alpha,
                      weight_fn=lambda losses: base)
    th, xn, yn, xvn, yvn = map(np.asarray, (theta, x, y, xv, yv))
    r = xn @ th - yn
    moved = th - alpha * xn.T @ (np.asarray(base) * r)        # θ' = θ − α Σ w_i r_i x_i
    gv = xvn.T @ (xvn @ moved - yvn) / len(yvn)
    np.testing.assert_allclose(la.example_grads, -alpha * r * (xn @ gv), rtol=1e-10)
    np.testing.assert_allclose(la.val_loss, 0.5 * np.mean((xvn @ moved - yvn) ** 2), rtol=1e-12)
    np.testing.assert_allclose(la.losses, 0.5 * r ** 2, rtol=1e-12)
    np.testing.assert_allclose(la.weights, base)
    np.testing.assert_allclose(la.val_grad, gv, rtol=1e-10)


def test_all_negative_scores_give_zero_weights_and_a_zero_step(x64):
    # 1-D θ: every train gradient is positive, the validation gradient negative.
    x, y = jnp.ones((5, 1)), -jnp.arange(1.0, 6.0)
    xv, yv = jnp.ones((3, 1)), jnp.full((3,), 10.0)
    theta = jnp.zeros(1)
    (loss, aux), grads, weights, info = rw.l2rw_value_and_grad(
        sq_per_example, sq_val, theta, (x, y), (xv, yv))
    assert aux is None
    np.testing.assert_array_equal(weights, np.zeros(5))
    np.testing.assert_array_equal(grads, np.zeros(1))
    assert float(loss) == 0.0 and int(info.num_positive) == 0
    s = jnp.array([-1.0, 2.0, 0.0, 6.0])
    np.testing.assert_allclose(rw.normalize_positive(s), [0, 0.25, 0, 0.75])


# -------------------------------------------------------------- a small nonlinear model
def _mlp_problem(seed=0, n=10, m=7, d=3, h=5, c=3):
    rng = np.random.default_rng(seed)
    params = {"w1": jnp.asarray(rng.normal(size=(d, h))), "b1": jnp.asarray(rng.normal(size=h)),
              "w2": jnp.asarray(rng.normal(size=(h, c)) / 2)}
    batch = {"x": jnp.asarray(rng.normal(size=(n, d))), "y": jnp.asarray(rng.integers(0, c, n))}
    val = {"x": jnp.asarray(rng.normal(size=(m, d))), "y": jnp.asarray(rng.integers(0, c, m))}
    return params, batch, val


def _logits(p, x):
    return jnp.tanh(x @ p["w1"] + p["b1"]) @ p["w2"]


def ce_per_example(p, b):
    logp = jax.nn.log_softmax(_logits(p, b["x"]))
    return -jnp.take_along_axis(logp, b["y"][:, None], 1)[:, 0]


def ce_per_example_aux(p, b):
    return ce_per_example(p, b), {"mean_logit": jnp.mean(_logits(p, b["x"]))}


def ce_val(p, b):
    return jnp.mean(ce_per_example(p, b))


def _unrolled(params, batch, val, alpha, w):
    """L_val(θ − α ∇_θ Σ_i w_i ℓ_i(θ)), written out."""
    g = jax.grad(lambda p: jnp.sum(w * ce_per_example(p, batch)))(params)
    return ce_val(jax.tree.map(lambda a, b: a - alpha * b, params, g), val)


def test_l2rw_on_a_nonlinear_model_equals_differentiating_the_explicit_virtual_step(x64):
    params, batch, val = _mlp_problem()
    alpha = 0.7
    eps = jnp.zeros(batch["y"].shape[0])
    want = jax.grad(lambda e: _unrolled(params, batch, val, alpha, e))(eps)
    (loss, aux), grads, weights, info = jax.jit(
        rw.l2rw_value_and_grad, static_argnums=(0, 1), static_argnames="has_aux")(
        ce_per_example_aux, ce_val, params, batch, val, step_size=alpha, has_aux=True)
    np.testing.assert_allclose(info.example_grads, want, rtol=1e-10, atol=1e-14)
    np.testing.assert_allclose(weights, np.maximum(-want, 0) / np.maximum(-want, 0).sum(),
                               rtol=1e-10, atol=1e-14)
    ref_loss, ref_grads = jax.value_and_grad(
        lambda p: jnp.sum(weights * ce_per_example(p, batch)))(params)
    np.testing.assert_allclose(loss, ref_loss, rtol=1e-12)
    for k in params:
        np.testing.assert_allclose(grads[k], ref_grads[k], rtol=1e-10, atol=1e-14)
    np.testing.assert_allclose(aux["mean_logit"], jnp.mean(_logits(params, batch["x"])))


# ------------------------------------------------------------------------ Meta-Weight-Net
def test_mwn_mlp_init_and_formula():
    phi = rw.mwn_init(jax.random.key(0))
    assert jax.tree.map(jnp.shape, phi) == {"hidden": {"kernel": (1, 100), "bias": (100,)},
                                            "output": {"kernel": (100, 1), "bias": (1,)}}
    assert float(jnp.max(jnp.abs(phi["hidden"]["kernel"]))) <= 1.0
    assert float(jnp.max(jnp.abs(phi["output"]["kernel"]))) <= 0.1
    assert float(jnp.std(phi["hidden"]["kernel"])) > 0.4       # uniform(±1): std 0.577
    losses = np.array([0.0, 0.3, 2.0, 7.5], np.float32)
    p = jax.tree.map(np.asarray, phi)
    h = np.maximum(losses[:, None] * p["hidden"]["kernel"] + p["hidden"]["bias"], 0)
    want = 1 / (1 + np.exp(-(h @ p["output"]["kernel"] + p["output"]["bias"])[:, 0]))
    np.testing.assert_allclose(rw.mwn_apply(phi, losses), want, rtol=1e-5)
    np.testing.assert_allclose(rw.mwn_example_weights(phi, losses), want / 4, rtol=1e-5)
    np.testing.assert_allclose(rw.mwn_example_weights(phi, losses, normalize=True),
                               want / want.sum(), rtol=1e-5)
    with pytest.raises(ValueError, match="hidden must be an int >= 1"):
        rw.mwn_init(jax.random.key(0), hidden=0)


@pytest.mark.parametrize("normalize", [False, True])
def test_mwn_meta_gradient_equals_finite_differences_of_the_unrolled_objective(x64, normalize):
    params, batch, val = _mlp_problem(2)
    alpha = 0.5
    phi = rw.mwn_init(jax.random.key(1), hidden=6, dtype=jnp.float64)
    losses = ce_per_example(params, batch)      # the MLP's input, no gradient through it

    def objective(ph):
        w = rw.mwn_apply(ph, losses)
        w = w / jnp.sum(w) if normalize else w / w.shape[0]
        return _unrolled(params, batch, val, alpha, w)

    objective = jax.jit(objective)
    grads, info = jax.jit(rw.mwn_meta_grad, static_argnums=(0, 1),
                          static_argnames=("normalize",))(
        ce_per_example, ce_val, params, phi, batch, val, step_size=alpha, normalize=normalize)
    np.testing.assert_allclose(info.val_loss, objective(phi), rtol=1e-12)
    assert bool(info.finite)
    flat, unravel = jax.flatten_util.ravel_pytree(grads)
    rng = np.random.default_rng(0)
    h = 1e-5
    for _ in range(4):
        d = rng.normal(size=flat.shape)
        step = unravel(jnp.asarray(h * d))
        up = objective(jax.tree.map(jnp.add, phi, step))
        down = objective(jax.tree.map(jnp.subtract, phi, step))
        fd = (up - down) / (2 * h)
        np.testing.assert_allclose(float(flat @ d), float(fd), rtol=1e-6, atol=1e-12)
    exact = jax.grad(objective)(phi)        # reverse-over-reverse through the unrolled step
    for a, b in zip(jax.tree.leaves(grads), jax.tree.leaves(exact)):
        np.testing.assert_allclose(a, b, rtol=1e-9, atol=1e-14)
    # the full iteration: MLP step with these grads, then the model's weighted gradient
    opt = optax.sgd(0.1)
    (loss, aux), g, (phi_new, _), w_new, info2 = rw.mwn_value_and_grad(
        ce_per_example, ce_val, params, phi, opt.init(phi), batch, val, step_size=alpha,
        optimizer=opt, normalize=normalize)
    assert aux is None
    want_phi = jax.tree.map(lambda p, q: p - 0.1 * q, phi, grads)
    for a, b in zip(jax.tree.leaves(phi_new), jax.tree.leaves(want_phi)):
        np.testing.assert_allclose(a, b, rtol=1e-12)
    want_w = rw.mwn_apply(want_phi, losses)
    want_w = want_w / jnp.sum(want_w) if normalize else want_w / want_w.shape[0]
    np.testing.assert_allclose(w_new, want_w, rtol=1e-12)
    ref_loss, ref = jax.value_and_grad(lambda p: jnp.sum(want_w * ce_per_example(p, batch)))(
        params)
    np.testing.assert_allclose(loss, ref_loss, rtol=1e-12)
    for k in params:
        np.testing.assert_allclose(g[k], ref[k], rtol=1e-10, atol=1e-14)


def test_mwn_optimizer_is_pytorch_adam_with_coupled_weight_decay(x64):
    p = jnp.array([0.5, -1.0, 2.0])
    grads = [jnp.array([0.1, 0.2, -0.3]), jnp.array([-0.4, 0.0, 0.5])]
    opt = rw.mwn_optimizer()
    state = opt.init(p)
    lr, wd, b1, b2, eps = 1e-3, 1e-4, 0.9, 0.999, 1e-8
    m = v = np.zeros(3)
    ref = np.asarray(p)
    for t, g in enumerate(grads, 1):
        updates, state = opt.update(g, state, p)
        p = optax.apply_updates(p, updates)
        gg = np.asarray(g) + wd * ref
        m, v = b1 * m + (1 - b1) * gg, b2 * v + (1 - b2) * gg ** 2
        ref = ref - lr * (m / (1 - b1 ** t)) / (np.sqrt(v / (1 - b2 ** t)) + eps)
    np.testing.assert_allclose(p, ref, rtol=1e-12)


def test_bad_losses_are_named():
    params, batch, val = _mlp_problem()
    with pytest.raises(ValueError, match="per_example_loss.*per-example float losses of shape"):
        rw.l2rw_weights(ce_val, ce_val, params, batch, val)
    with pytest.raises(ValueError, match="`val_loss` must return a float scalar"):
        rw.l2rw_weights(ce_per_example, ce_per_example, params, batch, val)
    with pytest.raises(TypeError, match="`val_loss` must be callable"):
        rw.lookahead(ce_per_example, None, params, batch, val)
