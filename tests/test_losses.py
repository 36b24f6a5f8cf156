"""Tests of autodo_jax.losses against closed forms, NumPy references and finite differences."""
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from autodo_jax import losses


def _log_softmax(x):
    x = np.asarray(x, np.float64)
    z = x - x.max(-1, keepdims=True)
    return z - np.log(np.exp(z).sum(-1, keepdims=True))


def _kl(log_a, log_b):
    return np.sum(np.exp(log_a) * (log_a - log_b), -1)


def test_loss_weight_is_one_at_zero_positive_and_monotone():
    assert float(losses.loss_weight(0.0)) == pytest.approx(1.0, abs=1e-7)
    lam = jnp.linspace(-30.0, 30.0, 61)
    w = np.asarray(losses.loss_weight(lam))
    np.testing.assert_allclose(w, np.log1p(np.exp(np.asarray(lam, np.float64))) / math.log(2), rtol=1e-5)
    assert np.all(w > 0) and np.all(np.diff(w) > 0)
    assert losses.loss_weight(jnp.zeros(3, jnp.bfloat16)).dtype == jnp.float32


@pytest.mark.parametrize("num_classes", [2, 10, 100])
def test_soft_label_init_gives_label_smoothing(num_classes):
    labels = np.arange(7) % num_classes
    eps = 0.05
    logits = losses.soft_label_init(labels, num_classes, eps)
    assert logits.shape == (7, num_classes) and logits.dtype == jnp.float32
    prob = np.exp(_log_softmax(logits))
    given = prob[np.arange(7), labels]
    np.testing.assert_allclose(given, 1 - eps * (num_classes - 1) / num_classes, rtol=1e-5)
    others = prob.copy()
    others[np.arange(7), labels] = np.nan
    np.testing.assert_allclose(others[~np.isnan(others)], eps / num_classes, rtol=1e-4)
    d = math.log(1 - num_classes + num_classes / eps)
    np.testing.assert_allclose(np.asarray(logits).max(-1), d / 2, rtol=1e-6)


def test_cross_entropy_matches_reference_and_is_stable():
    rng = np.random.default_rng(0)
    logits = rng.normal(size=(5, 4)) * 3
    labels = np.array([0, 3, 1, 2, 3])
    ref = -_log_softmax(logits)[np.arange(5), labels]
    np.testing.assert_allclose(losses.cross_entropy(jnp.asarray(logits, jnp.float32), labels), ref, rtol=1e-5)
    huge = jnp.asarray([[1e4, -1e4, 0.0], [-1e4, 1e4, 0.0]])
    ce = losses.cross_entropy(huge, jnp.array([0, 0]))
    np.testing.assert_allclose(ce, [0.0, 2e4], rtol=1e-6)
    grad = jax.grad(lambda x: losses.cross_entropy(x, jnp.array([0, 0])).sum())(huge)
    assert np.all(np.isfinite(grad))
    out16 = losses.cross_entropy(jnp.asarray(logits, jnp.bfloat16), labels)
    assert out16.dtype == jnp.float32
    np.testing.assert_allclose(out16, ref, atol=0.1)


def test_kl_is_zero_at_equality_symmetric_when_asked_and_matches_reference():
    rng = np.random.default_rng(1)
    a, b = rng.normal(size=(6, 5)) * 2, rng.normal(size=(6, 5)) * 2
    a32, b32 = jnp.asarray(a, jnp.float32), jnp.asarray(b, jnp.float32)
    np.testing.assert_allclose(losses.soft_label_loss(a32, a32), 0.0, atol=1e-6)
    np.testing.assert_allclose(losses.soft_label_loss(a32, a32, symmetric=True), 0.0, atol=1e-6)
    la, lb = _log_softmax(a), _log_softmax(b)
    # soft_label_loss(logits=p, soft_logits=q) = KL(q || p).
    np.testing.assert_allclose(losses.soft_label_loss(a32, b32), _kl(lb, la), rtol=1e-4)
    sym_ab = losses.soft_label_loss(a32, b32, symmetric=True)
    np.testing.assert_allclose(sym_ab, losses.soft_label_loss(b32, a32, symmetric=True), rtol=1e-6)
    np.testing.assert_allclose(sym_ab, 0.5 * (_kl(la, lb) + _kl(lb, la)), rtol=1e-4)
    assert not np.allclose(losses.soft_label_loss(a32, b32), losses.soft_label_loss(b32, a32))
    # Extreme logits: underflowed probabilities contribute 0, no NaN/inf in value or grads.
    x = jnp.asarray([[3e4, -3e4, 0.0]])
    y = jnp.asarray([[-3e4, 0.0, 3e4]])
    f = lambda u, v: losses.soft_label_loss(u, v, symmetric=True).sum()
    assert np.isfinite(float(f(x, y)))
    assert all(np.all(np.isfinite(g)) for g in jax.grad(f, argnums=(0, 1))(x, y))
    out16 = losses.soft_label_loss(a32.astype(jnp.bfloat16), b32, symmetric=True)
    assert out16.dtype == jnp.float32
    np.testing.assert_allclose(out16, sym_ab, atol=0.05)


def test_loss_gradients_match_finite_differences():
    with jax.enable_x64(True):
        rng = np.random.default_rng(2)
        logits, soft = rng.normal(size=(4, 6)), rng.normal(size=(4, 6))
        labels, lam = np.array([1, 0, 5, 2]), rng.normal(size=4)

        def total(logits, soft, lam):
            return (losses.train_loss(logits, mode="symmetric_kl", soft_logits=soft, lambda_w=lam)
                    + losses.train_loss(logits, mode="kl", soft_logits=soft)
                    + losses.train_loss(logits, mode="ce", labels=labels, lambda_w=lam)
                    + losses.val_loss(logits, labels, mask=np.array([1, 1, 0, 1])))

        args = (logits, soft, lam)
        grads = jax.jit(jax.grad(total, argnums=(0, 1, 2)))(*args)
        value = jax.jit(total)
        h = 1e-6
        for i, arg in enumerate(args):
            fd = np.zeros_like(arg)
            for idx in np.ndindex(arg.shape):
                up, down = list(args), list(args)
                up[i], down[i] = arg.copy(), arg.copy()
                up[i][idx] += h
                down[i][idx] -= h
                fd[idx] = (float(value(*up)) - float(value(*down))) / (2 * h)
            np.testing.assert_allclose(grads[i], fd, rtol=1e-6, atol=1e-8)
            assert np.abs(fd).max() > 1e-3


def test_weighted_mean_modes_and_validation_loss():
    per = jnp.asarray([1.0, 2.0, 3.0, 4.0])
    assert float(losses.weighted_mean(per)) == pytest.approx(2.5)
    assert float(losses.weighted_mean(per, jnp.asarray([0.0, 1.0, 2.0, 0.5]))) == pytest.approx(2.5)
    logits = jnp.asarray(np.random.default_rng(3).normal(size=(4, 3)), jnp.float32)
    labels = jnp.asarray([0, 2, 1, 1])
    soft = losses.soft_label_init(labels, 3)
    ce = losses.cross_entropy(logits, labels)
    np.testing.assert_allclose(losses.per_example_loss(logits, mode="ce", labels=labels), ce)
    np.testing.assert_allclose(losses.per_example_loss(logits, mode="kl", soft_logits=soft),
                               losses.soft_label_loss(logits, soft))
    lam = jnp.asarray([0.0, 1.0, -1.0, 2.0])
    np.testing.assert_allclose(
        losses.train_loss(logits, mode="symmetric_kl", soft_logits=soft, lambda_w=lam),
        jnp.mean(losses.loss_weight(lam) * losses.soft_label_loss(logits, soft, symmetric=True)),
        rtol=1e-6)
    assert float(losses.train_loss(logits, mode="ce", labels=labels)) == pytest.approx(float(ce.mean()))
    mask = jnp.asarray([True, False, True, False])
    assert float(losses.val_loss(logits, labels, mask)) == pytest.approx(float(ce[::2].mean()), rel=1e-6)
    assert float(losses.val_loss(logits, labels, jnp.zeros(4, bool))) == 0.0
    per_w = losses.per_example_train_loss(logits, mode="ce", labels=labels, lambda_w=lam)
    np.testing.assert_allclose(per_w, losses.loss_weight(lam) * ce, rtol=1e-6)
    assert float(losses.train_loss(logits, mode="ce", labels=labels, lambda_w=lam)) == \
        pytest.approx(float(per_w.mean()), rel=1e-6)
    # labels closed over (concrete) inside jit: checked on the host, not staged
    np.testing.assert_allclose(jax.jit(lambda x: losses.cross_entropy(x, labels))(logits), ce,
                               rtol=1e-6)


def test_bad_input_raises_clear_errors():
    logits = jnp.zeros((3, 4))
    labels = jnp.asarray([0, 1, 2])
    with pytest.raises(ValueError, match="Unknown loss mode"):
        losses.per_example_loss(logits, mode="focal", labels=labels)
    with pytest.raises(ValueError, match="needs labels"):
        losses.train_loss(logits, mode="ce")
    with pytest.raises(ValueError, match="needs soft_logits"):
        losses.train_loss(logits, mode="symmetric_kl", labels=labels)
    with pytest.raises(ValueError, match="labels must lie"):
        losses.cross_entropy(logits, jnp.asarray([0, 4, 1]))
    with pytest.raises(ValueError, match="labels must have shape"):
        losses.cross_entropy(logits, jnp.asarray([0, 1]))
    with pytest.raises(TypeError, match="integer"):
        losses.cross_entropy(logits, jnp.asarray([0.0, 1.0, 2.0]))
    with pytest.raises(ValueError, match="2-D"):
        losses.cross_entropy(jnp.zeros(4), labels)
    with pytest.raises(ValueError, match="soft_logits must match"):
        losses.soft_label_loss(logits, jnp.zeros((3, 5)))
    with pytest.raises(ValueError, match="weights"):
        losses.weighted_mean(jnp.zeros(3), jnp.zeros(4))
    with pytest.raises(ValueError, match="eps"):
        losses.soft_label_init(labels, 4, eps=0.0)
    with pytest.raises(ValueError, match="num_classes"):
        losses.soft_label_init(labels, 1)
    with pytest.raises(ValueError, match="labels must lie"):
        losses.soft_label_init(jnp.asarray([0, 7]), 4)
