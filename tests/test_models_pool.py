"""max_pool_2x2 (reshape max): nn.max_pool's forward; its gradient equals select-and-scatter
without ties and shares the cotangent equally among tied maxima (sum preserved)."""
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from autodo_jax.models.lenet import max_pool_2x2


def _reference(x):
    return nn.max_pool(x, (2, 2), strides=(2, 2))


def test_forward_and_gradient_match_max_pool_without_ties():
    x = jnp.asarray(np.random.default_rng(0).normal(size=(2, 7, 6, 3)).astype(np.float32))
    np.testing.assert_array_equal(max_pool_2x2(x), _reference(x))   # odd H: last row dropped
    g = jnp.asarray(np.random.default_rng(1).normal(size=(2, 3, 3, 3)).astype(np.float32))
    want = jax.vjp(_reference, x)[1](g)[0]
    got = jax.vjp(max_pool_2x2, x)[1](g)[0]
    np.testing.assert_array_equal(got, want)


def test_tied_maxima_share_the_cotangent():
    x = jnp.zeros((1, 2, 2, 1)).at[0, 0, 0, 0].set(-1.0)   # three tied maxima (0.0)
    got = jax.vjp(max_pool_2x2, x)[1](jnp.full((1, 1, 1, 1), 3.0))[0]
    np.testing.assert_allclose(np.asarray(got)[0, :, :, 0], [[0.0, 1.0], [1.0, 1.0]])
