"""Tests of autodo_jax.augment: known transforms, finite-difference gradients, sampling."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from autodo_jax import augment as aug

K = aug.NUM_OPS
# Compiled once per shape: eager op-by-op dispatch is slow on a shared 2-core CPU.
_warp = jax.jit(aug.warp, static_argnames=("upsample",))
_augment = jax.jit(aug.augment, static_argnames=("shared", "upsample", "ops"))
_matrices = jax.jit(aug.affine_matrices, static_argnums=(1, 2))
_sample = jax.jit(aug.sample_ops, static_argnames=("num_samples", "ops"))


def _values(b=1, **ops):
    """(b, K) op values at the mid (identity) with the named ops overridden."""
    row = np.array(aug.OP_MIDS, np.float64)
    for name, value in ops.items():
        row[aug.OP_NAMES.index(name)] = value
    return jnp.asarray(np.tile(row, (b, 1)))


def _images(shape, seed=0):
    return jnp.asarray(np.random.default_rng(seed).normal(size=shape), jnp.float32)


def _probe(images, seed=1):
    """A fixed random readout so scalar losses depend on every output pixel."""
    return jnp.asarray(np.random.default_rng(seed).normal(size=images.shape), images.dtype)


# ----------------------------------------------------------------------------- known warps


@pytest.mark.parametrize("channels", [1, 3])
def test_identity_matrices_return_the_image_exactly(channels):
    images = _images((3, 9, 7, channels))
    eye = jnp.broadcast_to(jnp.eye(3), (3, 3, 3))
    np.testing.assert_array_equal(_warp(images, eye), images)
    np.testing.assert_array_equal(_warp(images, _matrices(_values(3), 9, 7)), images)
    bf16 = images.astype(jnp.bfloat16)
    out = _warp(bf16, eye)
    assert out.dtype == jnp.bfloat16
    np.testing.assert_array_equal(out, bf16)


def test_rotation_by_90_degrees_is_the_pixel_permutation():
    images = _images((2, 8, 8, 3))
    out32 = _warp(images, _matrices(_values(2, rotate=90.0), 8, 8))
    # Positive angles turn counter-clockwise on screen, as np.rot90 does.
    np.testing.assert_allclose(out32, jnp.rot90(images, 1, axes=(1, 2)), atol=1e-5)
    np.testing.assert_allclose(
        _warp(images, _matrices(_values(2, rotate=-90.0), 8, 8)),
        jnp.rot90(images, -1, axes=(1, 2)), atol=1e-5)
    # bfloat16 images: bfloat16 out, computed in float32 (a permutation stays exact).
    out16 = _warp(images.astype(jnp.bfloat16), _matrices(_values(2, rotate=90.0), 8, 8))
    assert out16.dtype == jnp.bfloat16
    np.testing.assert_array_equal(out16, jnp.rot90(images.astype(jnp.bfloat16), 1, axes=(1, 2)))
    with jax.enable_x64(True):
        img64 = np.asarray(images, np.float64)
        out64 = _warp(img64, _matrices(_values(2, rotate=90.0), 8, 8))
        np.testing.assert_allclose(out64, np.rot90(img64, 1, axes=(1, 2)), rtol=0, atol=1e-12)


def test_integer_translation_shifts_with_border_replication():
    images = _images((2, 6, 10, 3))
    out = _warp(images, _matrices(_values(2, translate_x=0.2, translate_y=-1 / 6), 6, 10))
    # +2 columns (0.2 of 10) and -1 row (1/6 of 6); uncovered pixels repeat the border.
    rows = np.clip(np.arange(6) + 1, 0, 5)
    cols = np.clip(np.arange(10) - 2, 0, 9)
    expected = np.asarray(images)[:, rows][:, :, cols]
    np.testing.assert_allclose(out, expected, atol=1e-6)


def test_translation_is_a_fraction_of_the_size_and_scale_pivots_on_the_centre():
    mats = _matrices(_values(1, translate_x=0.45, translate_y=0.2), 20, 40)
    np.testing.assert_allclose(mats[0, :2, 2], [-18.0, -4.0], atol=1e-5)
    centre = np.array([19.5, 9.5, 1.0])
    for values in (_values(1, scale_x=1.7, scale_y=0.6, rotate=33.0, shear_x=0.2, shear_y=-0.1),):
        np.testing.assert_allclose(_matrices(values, 20, 40)[0] @ centre, centre, atol=1e-5)


def test_upsampled_warp_is_resize_warp_and_average_pool():
    images = _images((2, 6, 7, 3))
    mats = _matrices(_values(2, rotate=17.0, translate_x=0.1, shear_y=0.2), 6, 7)
    out = _warp(images, mats, upsample=4)
    # Reference: jax.image.resize up, warp with the matrix in high-resolution pixels, pool.
    big = jax.image.resize(images, (2, 24, 28, 3), "linear")
    up = jnp.array([[4.0, 0, 1.5], [0, 4.0, 1.5], [0, 0, 1]])
    ref = _warp(big, up @ mats @ jnp.linalg.inv(up)).reshape(2, 6, 4, 7, 4, 3).mean((2, 4))
    np.testing.assert_allclose(out, ref, atol=1e-5)
    ident = _warp(images, jnp.eye(3)[None], upsample=2)
    assert float(jnp.max(jnp.abs(ident - images))) > 1e-3  # anti-aliasing blurs a little


# ----------------------------------------------------------------------------- gradients


def _fd_check(f, x, directions, h, one_sided=False):
    """Compares jvp(f, x, d) with central (or right-sided) finite differences, and the
    reverse-mode gradient with the jvp, for each d in ``directions`` (n, *x.shape).

    Compiled once per call (eager op-by-op dispatch is slow on CPU).
    """
    def one(d):
        _, tangent = jax.jvp(f, (x,), (d,))
        lo = f(x) if one_sided else f(x - h * d)
        return tangent, (f(x + h * d) - lo) / (h if one_sided else 2 * h)

    @jax.jit
    def run(directions):
        tangent, fd = jax.vmap(one)(directions)
        grad = jax.grad(f)(x)
        return tangent, fd, jnp.tensordot(directions, grad, axes=grad.ndim), grad

    tangent, fd, grad_dot, grad = run(jnp.asarray(directions))
    np.testing.assert_allclose(tangent, fd, rtol=1e-6, atol=1e-6 * (1 + float(jnp.max(jnp.abs(fd)))))
    np.testing.assert_allclose(grad_dot, tangent, rtol=1e-10, atol=1e-10)
    return grad


def test_warp_gradients_match_central_differences_at_non_integer_coordinates():
    with jax.enable_x64(True):
        images = _images((2, 7, 8, 3)).astype(jnp.float64)
        probe = _probe(images)
        mats = _matrices(_values(2, rotate=11.0, translate_x=0.037, scale_y=1.1), 7, 8)
        loss_m = lambda m: jnp.sum(_warp(images, m) * probe)
        loss_i = lambda im: jnp.sum(_warp(im, mats) ** 2)
        rng = np.random.default_rng(0)
        d_m = rng.normal(size=(3,) + mats.shape)
        d_m[:, :, 2] = 0.0
        _fd_check(loss_m, mats, d_m, 1e-6)
        _fd_check(loss_i, images, rng.normal(size=(2,) + images.shape), 1e-6)
        _fd_check(lambda m: jnp.sum(_warp(images, m, upsample=2) * probe), mats, d_m, 1e-6)


@pytest.mark.parametrize("shift", [0.0, 1.0, -2.0])
def test_warp_gradient_at_integer_coordinates_is_the_right_sided_derivative(shift):
    # Identity and integer translations sample exact pixel centres: the bilinear sample is
    # piecewise linear there (a kink), so central differences average two slopes. The
    # documented gradient is the right-sided derivative; check it against one-sided FD and
    # against the closed form v[x+1] - v[x] (0 past the right border).
    with jax.enable_x64(True):
        images = _images((1, 5, 6, 2)).astype(jnp.float64)
        probe = _probe(images)
        mat = jnp.eye(3)[None].at[0, 0, 2].set(shift)
        loss = lambda m: jnp.sum(_warp(images, m) * probe)
        units = np.zeros((6,) + mat.shape)
        for n in range(6):
            units[(n, 0) + divmod(n, 3)] = 1.0
        grad = _fd_check(loss, mat, units, 1e-7, one_sided=True)
        img = np.asarray(images[0])
        cols = np.clip(np.arange(6) + int(shift), 0, 5)
        right = np.clip(np.arange(6) + int(shift) + 1, 0, 5)
        slope = img[:, right] - img[:, cols]  # d out / d x-coordinate
        np.testing.assert_allclose(grad[0, 0, 2], np.sum(slope * np.asarray(probe[0])), rtol=1e-10)
        assert abs(float(grad[0, 0, 2])) > 1e-3  # not dm-pix's zero
        loss = jax.jit(loss)
        left = (loss(mat) - loss(mat.at[0, 0, 2].add(-1e-7))) / 1e-7
        assert abs(float(left - grad[0, 0, 2])) > 1e-3  # a genuine kink: sides differ
        # Image gradients are linear and exact everywhere, also at integers.
        d_img = np.random.default_rng(1).normal(size=(2,) + images.shape)
        _fd_check(lambda im: jnp.sum(_warp(im, mat) ** 2), images, d_img, 1e-6)


def test_magnitude_gradient_matches_finite_differences_with_fixed_noise():
    with jax.enable_x64(True):
        b = 3
        images = _images((b, 8, 8, 3)).astype(jnp.float64)
        probe = _probe(images)
        rng = np.random.default_rng(4)
        gumbel, eps = rng.gumbel(size=(b, K, 2)), rng.normal(size=(b, K))
        p = jnp.full((b, K), 2.0)  # mostly "on", so most magnitudes matter
        m = jnp.asarray(np.random.default_rng(2).normal(size=(b, K)) * 0.5)

        def loss(m_logits):
            values = aug.op_values(p, m_logits, gumbel, eps)
            return jnp.sum(_warp(images, _matrices(values, 8, 8)) * probe)

        grad = _fd_check(loss, m, np.random.default_rng(3).normal(size=(3,) + m.shape), 1e-6)
        assert float(jnp.sum(jnp.abs(grad))) > 1e-3


def test_straight_through_probability_gradient_has_the_documented_form():
    with jax.enable_x64(True):
        b = 64
        rng = np.random.default_rng(4)
        gumbel, eps = rng.gumbel(size=(b, K, 2)), rng.normal(size=(b, K))
        p, m = rng.normal(size=(b, K)), rng.normal(size=(b, K))

        @jax.jit
        def values_and_grad(p):
            f = lambda q: aug.op_values(q, m, gumbel, eps)
            only = aug.op_values(p, m, gumbel, eps, ops=("rotate",))
            return f(p), jax.grad(lambda q: jnp.sum(f(q)))(p), only

        values, grad, only = values_and_grad(p)
        s = 1 / (1 + np.exp(-(p + gumbel[..., 0] - gumbel[..., 1])))
        on = (s >= 0.5).astype(np.float64)
        mids = np.asarray(aug.OP_MIDS)
        scale = eps * np.asarray(aug.OP_RANGES) / (1 + np.exp(-m))
        np.testing.assert_allclose(values, mids + on * scale, rtol=1e-12)
        assert 0.2 < on.mean() < 0.8
        # d value / d p = s (1 - s) · σ(m) ε range, for "on" and "off" draws alike.
        np.testing.assert_allclose(grad, s * (1 - s) * scale, rtol=1e-10, atol=1e-14)
        # Disabled ops stay at their mid value.
        np.testing.assert_allclose(only[:, 1:], np.tile(mids[1:], (b, 1)))
        np.testing.assert_allclose(only[:, 0], values[:, 0])


def test_on_off_frequency_and_init_values():
    assert abs(1 / (1 + np.exp(-aug.P_LOGIT_INIT)) - 0.2) < 1e-12
    assert 1 / (1 + np.exp(-aug.M_LOGIT_INIT)) == 0.5
    params = aug.init_params(4000)
    assert params["aug_p"].shape == params["aug_m"].shape == (4000, K)
    values = _sample(jax.random.PRNGKey(6), params["aug_p"], params["aug_m"])
    on = np.asarray(values != jnp.asarray(aug.OP_MIDS))
    assert abs(on.mean() - 0.2) < 0.01  # 28,000 draws: std 0.0024
    rot = np.asarray(values[:, 0])[on[:, 0]]
    assert abs(rot.std() / (0.5 * 30.0) - 1.0) < 0.1  # σ(m)·range = 15 degrees


# ----------------------------------------------------------------------------- augment


@jax.jit(static_argnames=("shared",))
def _augment_and_grad(key, images, params, probe, shared):
    def loss(prm):
        out = aug.augment(key, images, prm, shared=shared)
        return jnp.sum(out.astype(jnp.float32) * probe), out
    (_, out), grads = jax.value_and_grad(loss, has_aux=True)(params)
    return out, grads


def test_shared_mode_broadcasts_one_row_under_jit():
    b = 4
    images = _images((b, 8, 8, 3))
    probe = _probe(images)
    key = jax.random.PRNGKey(7)
    row = {"aug_p": jnp.full((1, K), 1.0), "aug_m": jnp.full((1, K), 0.3)}
    # Per-example mode with b copies of the row; extra keys (a gathered table row) are ignored.
    tiled = dict(jax.tree.map(lambda x: jnp.tile(x, (b, 1)), row), loss_w=jnp.zeros(b))
    out_shared, g_shared = _augment_and_grad(key, images, row, probe, True)
    out_tiled, g_tiled = _augment_and_grad(key, images, tiled, probe, False)
    np.testing.assert_array_equal(out_shared, out_tiled)
    assert not np.allclose(out_shared[0], out_shared[1])  # independent noise per image
    for name in row:
        assert g_shared[name].shape == (1, K)
        np.testing.assert_allclose(g_shared[name][0], g_tiled[name].sum(0), rtol=1e-4, atol=1e-4)
    assert float(jnp.abs(g_tiled["aug_p"]).sum()) > 0 and np.all(np.isfinite(g_tiled["aug_p"]))
    # The output is the warp of the sampled matrices.


def test_bad_input_raises_clear_errors():
    key = jax.random.PRNGKey(0)
    images = _images((2, 8, 8, 3))
    params = aug.init_params(2)
    with pytest.raises(ValueError, match="4-D"):
        aug.augment(key, images[0], params)
    with pytest.raises(ValueError, match="aug_p"):
        aug.augment(key, images, {"aug_p": jnp.zeros((2, 6)), "aug_m": params["aug_m"]})
    with pytest.raises(ValueError, match="shared=True"):
        aug.augment(key, images, aug.init_params(1))
    with pytest.raises(ValueError, match="one row"):
        aug.augment(key, images, params, shared=True)
    with pytest.raises(ValueError, match="keys"):
        aug.augment(key, images, {"aug_p": params["aug_p"]})
    with pytest.raises(ValueError, match="Unknown op"):
        aug.augment(key, images, params, ops=("rotate", "flip"))
    with pytest.raises(TypeError, match="sequence"):
        aug.augment(key, images, params, ops="rotate")
    with pytest.raises(ValueError, match="non-finite"):
        aug.augment(key, images, {"aug_p": params["aug_p"].at[1, 3].set(jnp.nan),
                                  "aug_m": params["aug_m"]})
    with pytest.raises(ValueError, match="upsample"):
        aug.augment(key, images, params, upsample=0)
    with pytest.raises(TypeError, match="floating"):
        aug.warp(images.astype(jnp.uint8), jnp.eye(3)[None])
    with pytest.raises(ValueError, match="matrices"):
        aug.warp(images, jnp.eye(3))
    with pytest.raises(ValueError, match="values"):
        aug.affine_matrices(jnp.zeros((2, 6)), 8, 8)
