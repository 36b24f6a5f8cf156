"""PIL-semantics ops: known small images, and agreement with Pillow itself."""
import numpy as np
import pytest
from PIL import Image, ImageDraw, ImageEnhance, ImageOps

from autodo_jax.data import pil_ops as P


def _ramp():
    """One 4x4 RGB image, channel values 0..15 * 16 (+1 in G, +2 in B)."""
    base = (np.arange(16).reshape(4, 4) * 16).astype(np.uint8)
    return np.stack([base, base + 1, base + 2], axis=-1)[None]


def test_invert_solarize_posterize_known():
    x = _ramp()
    np.testing.assert_array_equal(P.invert(x), 255 - x)
    out = P.solarize(x, np.array([128.0]))
    np.testing.assert_array_equal(out, np.where(x >= 128, 255 - x, x))
    assert out[0, 2, 0, 0] == 255 - 128 and out[0, 1, 3, 0] == 112   # 128 flips, 112 stays
    v = np.array([[0, 1, 127, 128, 200, 255]], np.uint8).reshape(1, 1, 6, 1)
    np.testing.assert_array_equal(P.posterize(v, np.array([4.9]))[0, 0, :, 0],
                                  [0, 0, 112, 128, 192, 240])
    np.testing.assert_array_equal(P.posterize(v, np.array([8]))[0], v[0])
    np.testing.assert_array_equal(P.posterize(v, np.array([1]))[0, 0, :, 0],
                                  [0, 0, 0, 128, 128, 128])


def test_autocontrast_and_equalize_known():
    x = np.array([50, 100, 150], np.uint8).reshape(1, 1, 3, 1)
    np.testing.assert_array_equal(P.autocontrast(x)[0, 0, :, 0], [0, 127, 255])
    flat = np.full((1, 2, 2, 1), 77, np.uint8)
    np.testing.assert_array_equal(P.autocontrast(flat), flat)
    np.testing.assert_array_equal(P.equalize(flat), flat)
    # Two values, 256 pixels each: step = 256 // 255 = 1 -> LUT(lo) = 0, LUT(hi) = 256 -> 255.
    two = np.concatenate([np.full(256, 10), np.full(256, 20)]).astype(np.uint8)
    eq = P.equalize(two.reshape(1, 16, 32, 1))
    assert set(np.unique(eq)) == {0, 255}


def test_cutout_area_and_fill():
    x = np.zeros((3, 32, 32, 3), np.uint8)
    out = P.cutout(x, np.array([6.4, 6.4, 0.0]), np.array([16.0, 1.0, 16.0]),
                   np.array([16.0, 30.0, 16.0]))
    grey = np.all(out == np.array([125, 123, 114], np.uint8), axis=-1)
    # Centre 16: x0 = int(12.8) = 12, x1 = int(18.8) = 18 -> 7 px inclusive.
    assert grey[0].sum() == 49 and grey[0, 12:19, 12:19].all()
    # Near the corner: x0 = 0, x1 = int(6.4) = 6; y0 = int(26.8) = 26, y1 = min(32, 32.4) = 32.
    assert grey[1].sum() == 7 * 6 and grey[1, 26:, :7].all()
    assert not grey[2].any()


def test_translate_direction_and_amount():
    x = np.zeros((2, 8, 8, 1), np.uint8)
    x[:, 4, 4] = 200
    tx = P.translate_x(x, np.array([0.25, -0.25]))    # 2 px
    assert tx[0, 4, 2, 0] == 200 and tx[1, 4, 6, 0] == 200 and tx.sum() == 400
    ty = P.translate_y(x, np.array([0.25, -0.25]))
    assert ty[0, 2, 4, 0] == 200 and ty[1, 6, 4, 0] == 200
    big = P.translate_x(np.full((1, 8, 8, 1), 9, np.uint8), np.array([0.5]))
    assert big[0, :, 4:].max() == 0 and big[0, :, :4].min() == 9    # black fill


def test_rotate_90_and_shear_known():
    x = np.zeros((1, 4, 4, 1), np.uint8)
    x[0, 0, 3] = 255    # top-right corner
    r = P.rotate(x, np.array([90.0]))    # counter-clockwise: goes to the top-left
    assert r[0, 0, 0, 0] == 255 and r.sum() == 255
    s = P.shear_x(np.tile(np.arange(4, dtype=np.uint8), (1, 4, 1))[..., None], np.array([1.0]))
    # Row y reads column floor((x + 0.5) + (y + 0.5)) = x + y + 1; black outside.
    np.testing.assert_array_equal(s[0, 0, :, 0], [1, 2, 3, 0])
    np.testing.assert_array_equal(s[0, 2, :, 0], [3, 0, 0, 0])


def _pil_batch(x, fn, values=None):
    out = []
    for i, im in enumerate(x):
        pil = Image.fromarray(im[..., 0] if im.shape[-1] == 1 else im)
        res = np.asarray(fn(pil, None if values is None else float(values[i])))
        out.append(res.reshape(im.shape))
    return np.stack(out)


def _cutout_ref(size, cx, cy):
    def fn(im, i):
        w, h = im.size
        x0, y0 = int(max(0, cx[i] - size[i] / 2.)), int(max(0, cy[i] - size[i] / 2.))
        im = im.copy()
        ImageDraw.Draw(im).rectangle((x0, y0, min(w, x0 + size[i]), min(h, y0 + size[i])),
                                     (125, 123, 114))
        return im
    return fn


@pytest.mark.parametrize("channels", [3, 1])
def test_matches_pillow(channels):
    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, (12, 16, 16, channels), dtype=np.uint8)
    x[:4] = x[:4] // 4 + 60      # low-contrast images for AutoContrast / Equalize
    geo = rng.uniform(-0.3, 0.3, 12)
    frac = rng.uniform(-0.45, 0.45, 12)
    deg = rng.uniform(-30, 30, 12)
    fac = rng.uniform(0.1, 1.9, 12)
    thr = rng.uniform(0, 256, 12)
    bits = rng.uniform(4, 8, 12)

    def affine(coeffs):
        return lambda im, v: im.transform(im.size, Image.AFFINE, coeffs(v))

    cases = [
        (P.shear_x(x, geo), affine(lambda v: (1, v, 0, 0, 1, 0)), geo),
        (P.shear_y(x, geo), affine(lambda v: (1, 0, 0, v, 1, 0)), geo),
        (P.translate_x(x, frac), affine(lambda v: (1, 0, v * 16, 0, 1, 0)), frac),
        (P.translate_y(x, frac), affine(lambda v: (1, 0, 0, 0, 1, v * 16)), frac),
        (P.brightness(x, fac), lambda im, v: ImageEnhance.Brightness(im).enhance(v), fac),
        (P.color(x, fac), lambda im, v: ImageEnhance.Color(im).enhance(v), fac),
        (P.contrast(x, fac), lambda im, v: ImageEnhance.Contrast(im).enhance(v), fac),
        (P.sharpness(x, fac), lambda im, v: ImageEnhance.Sharpness(im).enhance(v), fac),
        (P.autocontrast(x), lambda im, v: ImageOps.autocontrast(im), None),
        (P.equalize(x), lambda im, v: ImageOps.equalize(im), None),
        (P.solarize(x, thr), ImageOps.solarize, thr),
        (P.posterize(x, bits), lambda im, v: ImageOps.posterize(im, int(v)), bits),
    ]
    for i, (mine, fn, values) in enumerate(cases):
        np.testing.assert_array_equal(mine, _pil_batch(x, fn, values), err_msg=f"case {i}")
    # Rotation: Pillow uses 16.16 fixed point; allow a few boundary pixels to differ.
    diff = P.rotate(x, deg) != _pil_batch(x, lambda im, v: im.rotate(v), deg)
    assert diff.mean() < 1e-3
    if channels == 3:
        size, cx, cy = rng.uniform(0, 3.2, 12), rng.uniform(0, 16, 12), rng.uniform(0, 16, 12)
        ref = np.stack([np.asarray(_cutout_ref(size, cx, cy)(Image.fromarray(im), i))
                        for i, im in enumerate(x)])
        np.testing.assert_array_equal(P.cutout(x, size, cx, cy), ref)
