"""Model zoo: parameter counts, variable layout, encoder/head split, dtype option."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from autodo_jax.models import (MODEL_NAMES, count_params, encode, get_model, head_apply,
                               init_variables, min_image_size)

# (name, image shape, classes, encoder params, total params)
_COUNTS = [
    ("lenet", (28, 28, 1), 10, 43_576, 44_426),
    ("small_cnn", (28, 28, 1), 10, 420_352, 421_642),
    ("mnist_resnet", (28, 28, 1), 10, 174_320, 174_970),   # the original's "174k"
    ("resnet18", (224, 224, 3), 1000, 11_176_512, 11_689_512),  # torchvision: 11,689,512
    ("wrn28_2", (32, 32, 3), 10, 1_466_320, 1_467_610),      # ~1.47M
    ("wrn28_10", (32, 32, 3), 10, 36_472_784, 36_479_194),   # ~36.5M
]


@pytest.mark.parametrize("name,shape,classes,n_enc,n_total", _COUNTS)
def test_param_counts_and_layout(name, shape, classes, n_enc, n_total):
    model = get_model(name, classes)
    variables = jax.eval_shape(lambda k: init_variables(model, k, shape), jax.random.key(0))
    params = variables["params"]
    assert set(params) == {"encoder", "head"}
    assert params["head"]["kernel"].shape[1] == classes
    assert params["head"]["bias"].shape == (classes,)
    assert count_params(params["encoder"]) == n_enc
    assert count_params(params) == n_total
    has_bn = name not in ("lenet", "small_cnn")
    assert set(variables["batch_stats"]) == ({"encoder"} if has_bn else set())
    assert all(x.dtype == jnp.float32 for x in jax.tree_util.tree_leaves(variables))


def test_all_names_tested_and_bad_name():
    assert {c[0] for c in _COUNTS} == set(MODEL_NAMES)
    with pytest.raises(ValueError, match="model name"):
        get_model("resnet50", 10)
    with pytest.raises(ValueError, match="model name"):
        min_image_size("resnet50")


@pytest.mark.parametrize("name", MODEL_NAMES)
def test_every_model_traces_at_its_minimum_image_size(name):
    size = min_image_size(name)
    assert isinstance(size, int) and size >= 1
    model = get_model(name, 10)
    variables = jax.eval_shape(lambda k: init_variables(model, k, (size, size, 3)),
                               jax.random.key(0))
    logits = jax.eval_shape(lambda v: model.apply(v, jnp.zeros((2, size, size, 3))), variables)
    assert logits.shape == (2, 10)


def test_encode_head_split_matches_apply():
    """mnist_resnet: the BatchNorm path (running statistics updated only in train mode)."""
    model = get_model("mnist_resnet", 10)
    variables = init_variables(model, jax.random.key(1), (8, 8, 1))
    x = jax.random.normal(jax.random.key(2), (4, 8, 8, 1))

    @jax.jit
    def run(variables, x):
        logits = model.apply(variables, x, train=False)
        p, bs = variables["params"], variables["batch_stats"]
        feats, same_bs = encode(model, p, bs, x, train=False)
        _, new_bs = encode(model, p, bs, x, train=True)
        return logits, feats, head_apply(p["head"], feats), same_bs, new_bs

    logits, feats, split_logits, same_bs, new_bs = run(variables, x)
    bs = variables["batch_stats"]
    assert feats.dtype == jnp.float32 and feats.ndim == 2
    np.testing.assert_array_equal(split_logits, logits)
    assert jax.tree_util.tree_all(jax.tree_util.tree_map(
        lambda a, b: bool(jnp.all(a == b)), bs, same_bs))
    changed = jax.tree_util.tree_map(lambda a, b: bool(jnp.any(a != b)), bs, new_bs)
    assert all(jax.tree_util.tree_leaves(changed))


def test_bfloat16_compute_keeps_float32_params():
    model = get_model("mnist_resnet", 10, dtype=jnp.bfloat16)
    # Variables do not depend on the compute dtype: reuse the float32 model's init.
    shapes = jax.eval_shape(lambda k: init_variables(model, k, (8, 8, 1)), jax.random.key(1))
    assert all(x.dtype == jnp.float32 for x in jax.tree_util.tree_leaves(shapes))
    variables = init_variables(get_model("mnist_resnet", 10), jax.random.key(1), (8, 8, 1))
    x = jax.random.normal(jax.random.key(2), (2, 8, 8, 1))
    logits = jax.jit(lambda v, x: model.apply(v, x))(variables, x)
    ref = jax.jit(lambda v, x: get_model("mnist_resnet", 10).apply(v, x))(variables, x)
    assert logits.dtype == jnp.float32
    np.testing.assert_allclose(logits, ref, atol=0.1, rtol=0.1)
