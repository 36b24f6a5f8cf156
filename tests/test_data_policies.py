"""Policies and host transforms: sampling statistics, registry, crop/flip/erase, seeds."""
import hashlib
import json

import numpy as np
import pytest

from autodo_jax.data import policies, transforms


def test_policy_data_is_the_extracted_original():
    data = policies.policy_data()
    order = ["fa_reduced_cifar10", "fa_reduced_svhn", "fa_resnet50_rimagenet",
             "dada_reduced_cifar10", "dada_reduced_cifar100", "dada_reduced_svhn",
             "dada_resnet50_rimagenet"]
    text = json.dumps({k: data["policies"][k] for k in order})
    assert len(text) == 176_172
    assert hashlib.sha256(text.encode()).hexdigest() == (
        "3485fc1d2c4fc84342319bde24870262c636a75d56b2df37d780c658851b792c")
    assert "gudovskiy/autodo" in data["source"]
    assert set(data["ops_used_by_policies"]) <= set(policies.OPS)


def test_randaugment_sampling_statistics():
    ra = policies.RandAugment(3, 15)
    op_idx, values = ra.sample(40_000, np.random.default_rng(0))
    assert op_idx.shape == values.shape == (40_000, 3)
    freq = np.bincount(op_idx.ravel(), minlength=11) / op_idx.size
    np.testing.assert_allclose(freq, 1 / 11, atol=0.006)
    names = np.array(ra.names)[op_idx]
    rot = values[names == "Rotate"]
    assert np.abs(rot).max() <= 15.0 + 1e-9          # M/30 of the 30 degree range
    assert abs((rot < 0).mean() - 0.5) < 0.03         # random sign
    np.testing.assert_allclose(np.abs(rot).mean(), 7.5, rtol=0.05)   # uniform magnitude
    col = values[names == "Color"]
    assert col.min() >= 0.1 and col.max() <= 0.1 + 1.8 * 0.5 + 1e-9   # only reduces colour
    tx = values[names == "TranslateX"]
    assert np.abs(tx).max() <= 0.45 * 0.5 + 1e-9
    sub = policies.RandAugment(1, 15, colour_only=True)
    assert sub.names == ("Identity", "AutoContrast", "Equalize", "Invert", "Color", "Sharpness")
    idx, _ = sub.sample(6000, np.random.default_rng(1))
    np.testing.assert_allclose(np.bincount(idx.ravel()) / 6000, 1 / 6, atol=0.02)


def test_subpolicy_sampling_statistics():
    fa = policies.SubPolicyAugment("fa_reduced_cifar10")
    assert fa.op_idx.shape == (493, 2)
    rng = np.random.default_rng(0)
    n = 60_000
    op_idx, values = fa.sample(n, rng)
    # Each op of a sub-policy fires with its probability: compare overall firing rates.
    assert abs((op_idx[:, 0] >= 0).mean() - fa.prob[:, 0].mean()) < 0.01
    assert abs((op_idx[:, 1] >= 0).mean() - fa.prob[:, 1].mean()) < 0.01
    names = np.array(fa.names + ("-",))[op_idx]
    rot = values[names == "Rotate"]
    assert np.abs(rot).max() <= 30 and abs((rot < 0).mean() - 0.5) < 0.05
    post = values[names == "Posterize"]
    assert post.min() >= 4 and post.max() <= 8
    # DADA: 25 sub-policies drawn uniformly: per-op firing frequency in slot 0 is
    # mean_s prob[s, 0] * [op[s, 0] == k].
    dada = policies.SubPolicyAugment("dada_reduced_svhn")
    assert dada.op_idx.shape == (25, 2)
    op_idx, _ = dada.sample(n, rng)
    k = len(dada.names)
    got = np.bincount(op_idx[:, 0][op_idx[:, 0] >= 0], minlength=k) / n
    want = np.array([(dada.prob[:, 0] * (dada.op_idx[:, 0] == j)).mean() for j in range(k)])
    np.testing.assert_allclose(got, want, atol=0.006)
    with pytest.raises(ValueError, match="unknown policy set 'nope'.*allowed"):
        policies.SubPolicyAugment("nope")


def test_apply_matches_per_op_application():
    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, (6, 8, 8, 3), dtype=np.uint8)
    names = ("Invert", "Solarize", "Identity")
    op_idx = np.array([[0, -1], [1, 0], [2, 2], [-1, -1], [0, 0], [1, 1]])
    values = np.full((6, 2), 100.0)
    out = policies.apply_ops(x, op_idx, values, names, rng)
    np.testing.assert_array_equal(out[0], 255 - x[0])
    np.testing.assert_array_equal(out[1], 255 - np.where(x[1] >= 100, 255 - x[1], x[1]))
    np.testing.assert_array_equal(out[2], x[2])
    np.testing.assert_array_equal(out[3], x[3])
    np.testing.assert_array_equal(out[4], x[4])


def test_registry_and_errors():
    assert transforms.POLICY_NAMES == ("none", "crop_flip", "randaugment", "color_subset",
                                       "fast_aa", "dada", "trivialaugment")
    assert transforms.allowed_policies("mnist5k") == ("none", "crop_flip", "randaugment",
                                                      "color_subset", "trivialaugment")
    with pytest.raises(ValueError, match=r"unknown policy 'autoaug'; allowed: \('none'"):
        transforms.host_transform("autoaug", "cifar10")
    with pytest.raises(ValueError, match="'fast_aa' has no original policy.*mnist"):
        transforms.host_transform("fast_aa", "mnist")
    with pytest.raises(ValueError, match="unknown dataset family 'foo'"):
        transforms.host_transform("none", "foo")
    t = transforms.host_transform("fast_aa", "cifar100")
    assert t.policy.name == "fa_reduced_cifar10"     # the original reuses the CIFAR-10 policy
    assert transforms.host_transform("dada", "cifar100").policy.name == "dada_reduced_cifar100"
    assert transforms.host_transform("randaugment", "svhn_cropped").policy.m == 7
    assert transforms.host_transform("color_subset", "cifar10").policy.n == 1


def test_normalisation_and_determinism():
    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, (64, 32, 32, 3), dtype=np.uint8)
    none = transforms.host_transform("none", "cifar10")
    f = transforms.FAMILIES["cifar10"]
    ref = (x / 255.0 - np.array(f.mean)) / np.array(f.std)
    np.testing.assert_allclose(none(x, rng), ref, atol=1e-5)
    for name in transforms.allowed_policies("cifar10"):
        t = transforms.host_transform(name, "cifar10")
        a, b = t(x, np.random.default_rng(3)), t(x, np.random.default_rng(3))
        assert a.dtype == np.float32 and a.shape == x.shape
        np.testing.assert_array_equal(a, b)
    with pytest.raises(TypeError, match="uint8"):
        none(x.astype(np.float32), rng)


def test_crop_flip_and_erasing_statistics():
    x = np.full((2000, 8, 8, 1), 200, np.uint8)
    crops = transforms.random_crop(x, 4, np.random.default_rng(0))
    black_rows = (crops[:, :, :, 0] == 0).all(axis=2).sum(axis=1)   # zero padding rows
    assert black_rows.max() == 4 and abs(black_rows.mean() - 20 / 9) < 0.15
    y = np.zeros((2000, 4, 4, 1), np.uint8)
    y[:, :, 0] = 255
    flipped = transforms.random_flip(y, np.random.default_rng(0))
    frac = (flipped[:, 0, 3, 0] == 255).mean()
    assert abs(frac - 0.5) < 0.04
    ones = np.ones((4000, 32, 32, 3), np.float32)
    erased = transforms.random_erasing(ones, np.random.default_rng(0))
    area = (erased[..., 0] == 0).mean(axis=(1, 2))
    hit = area > 0
    assert abs(hit.mean() - 0.5) < 0.03
    assert area[hit].min() >= 0.015 and area[hit].max() <= 0.36
    assert abs(area[hit].mean() - 0.175) < 0.02
    svhn = transforms.host_transform("crop_flip", "svhn")
    assert not svhn.family.flip and svhn.family.erase and svhn.family.crop_pad == 4
