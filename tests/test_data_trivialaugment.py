"""TrivialAugment Wide: every op at every strength against Pillow with the authors' value
formulas (automl/trivialaugment aug_lib.py, "wide_standard"), and the sampling law."""
import numpy as np
import pytest
from PIL import Image, ImageEnhance, ImageOps

from autodo_jax.data import policies, transforms

TOP = 30   # strength levels 0..30


def _affine(coeffs):
    return lambda im: im.transform(im.size, Image.AFFINE, coeffs)


def _reference(name, level, sign):
    """The PIL transform of op `name` at integer `level` with sign ±1, as the authors
    compute its value (Python int() truncation, float() scaling)."""
    enh = float(level) * (2.0 - 0.01) / TOP + 0.01
    shear = sign * float(level) * 0.99 / TOP
    px = sign * int(level * 32 / TOP)
    return {
        "Identity": lambda im: im,
        "AutoContrast": ImageOps.autocontrast,
        "Equalize": ImageOps.equalize,
        "Rotate": lambda im: im.rotate(sign * int(level * 135 / TOP)),
        "Solarize": lambda im: ImageOps.solarize(im, 256 - int(level * 256 / TOP)),
        "Color": lambda im: ImageEnhance.Color(im).enhance(enh),
        "Posterize": lambda im: ImageOps.posterize(im, 8 - int(level * 6 / TOP)),
        "Contrast": lambda im: ImageEnhance.Contrast(im).enhance(enh),
        "Brightness": lambda im: ImageEnhance.Brightness(im).enhance(enh),
        "Sharpness": lambda im: ImageEnhance.Sharpness(im).enhance(enh),
        "ShearX": _affine((1, shear, 0, 0, 1, 0)),
        "ShearY": _affine((1, 0, 0, shear, 1, 0)),
        "TranslateXPixels": _affine((1, 0, px, 0, 1, 0)),
        "TranslateYPixels": _affine((1, 0, 0, 0, 1, px)),
    }[name]


@pytest.mark.parametrize("channels", [3, 1])
def test_every_op_and_strength_matches_pillow(channels):
    ta = policies.TrivialAugmentWide()
    levels = np.arange(TOP + 1)
    n = len(levels)
    rng = np.random.default_rng(channels)
    x = rng.integers(0, 256, (n, 20, 20, channels), dtype=np.uint8)
    x[::3] = x[::3] // 4 + 60          # some low-contrast images for AutoContrast/Equalize
    signs = np.where(levels % 2 == 0, 1.0, -1.0)
    for k, name in enumerate(ta.names):
        op_idx = np.full((n, 1), k)
        values = policies.trivialaugment_values(op_idx, levels[:, None])
        if name in policies.GEOMETRIC:
            values = values * signs[:, None]
        mine = policies.apply_ops(x, op_idx, values, ta.names, rng)
        ref = np.stack([
            np.asarray(_reference(name, int(lv), int(sg))(
                Image.fromarray(im[..., 0] if channels == 1 else im))).reshape(im.shape)
            for im, lv, sg in zip(x, levels, signs)])
        if name == "Rotate":   # Pillow's 16.16 fixed point: a few boundary pixels differ
            assert (mine != ref).mean() < 2e-3, name
        else:
            np.testing.assert_array_equal(mine, ref, err_msg=name)


def test_wide_ranges_at_the_extremes():
    v = lambda name, level: float(policies.trivialaugment_values(
        np.array([[policies.TrivialAugmentWide().names.index(name)]]), np.array([[level]]))[0, 0])
    assert (v("Rotate", 30), v("Rotate", 1)) == (135.0, 4.0)
    assert (v("Solarize", 0), v("Solarize", 30)) == (256.0, 0.0)
    assert (v("Posterize", 0), v("Posterize", 30)) == (8.0, 2.0)
    assert v("Color", 0) == pytest.approx(0.01) and v("Color", 30) == pytest.approx(2.0)
    assert v("ShearX", 30) == pytest.approx(0.99) and v("TranslateYPixels", 30) == 32.0
    assert v("Identity", 17) == 0.0


def test_sampling_is_one_uniform_op_and_strength_per_image():
    ta = policies.TrivialAugmentWide()
    n = 56_000
    op_idx, values = ta.sample(n, np.random.default_rng(0))
    assert op_idx.shape == values.shape == (n, 1)
    freq = np.bincount(op_idx[:, 0], minlength=14) / n
    np.testing.assert_allclose(freq, 1 / 14, atol=0.005)
    rot = values[op_idx == ta.names.index("Rotate")]
    assert abs((rot < 0).mean() - 0.5) < 0.03
    # |value| = int(l * 135 / 30) for l uniform on 0..30
    want = np.bincount(np.trunc(np.arange(31) * 135 / 30).astype(int), minlength=136) / 31
    got = np.bincount(np.abs(rot).astype(int), minlength=136) / rot.size
    np.testing.assert_allclose(got, want, atol=0.012)
    col = values[op_idx == ta.names.index("Color")]
    assert col.min() >= 0.01 - 1e-12 and col.max() <= 2.0 + 1e-12 and (col > 0).all()
    np.testing.assert_allclose(col.mean(), 0.01 + 1.99 / 2, atol=0.03)


def test_registered_as_a_host_policy():
    t = transforms.host_transform("trivialaugment", "mnist5k")
    assert isinstance(t.policy, policies.TrivialAugmentWide)
    x = np.random.default_rng(0).integers(0, 256, (16, 28, 28, 1), dtype=np.uint8)
    a, b = t(x, np.random.default_rng(5)), t(x, np.random.default_rng(5))
    assert a.dtype == np.float32 and a.shape == x.shape
    np.testing.assert_array_equal(a, b)
    assert "trivialaugment" in transforms.allowed_policies("cifar10")
