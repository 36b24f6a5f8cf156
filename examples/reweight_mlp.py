"""L2RW and Meta-Weight-Net in an ordinary JAX/optax training loop (no AutoDO).

A small MLP learns 4 Gaussian classes from 800 examples of which 50 % carry a uniformly
random label; 40 clean examples form the validation split. Three runs with the same data,
initialisation and batches: plain cross-entropy, Learning to Reweight
(``reweight.l2rw_value_and_grad``: weights from a one-step look-ahead at every step) and
Meta-Weight-Net (``reweight.mwn_value_and_grad``: a 1-100-1 MLP maps each loss to its
weight and is meta-learned on the clean batches). Reported: clean test accuracy of each,
and the share of the example weight that lands on mislabelled examples. SGD with momentum
0.9 at lr 0.05: L2RW's weights sum to 1 over the few examples it keeps, so its steps are
larger than a mean's; at lr 0.1 its run diverged here (validation loss 1e8 after 400
steps) while the other two trained.

    python examples/reweight_mlp.py           # prints one JSON line
"""
from __future__ import annotations

import argparse
import functools
import json

import jax
import jax.numpy as jnp
import numpy as np
import optax

from autodo_jax import reweight

CLASSES, DIM, HIDDEN, BATCH, LR = 4, 16, 64, 64, 0.05


def make_data(seed: int, noise: float):
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(CLASSES, DIM)) * 1.2

    def draw(n, noise):
        y = rng.integers(0, CLASSES, n)
        x = centres[y] + rng.normal(size=(n, DIM))
        noisy = rng.random(n) < noise
        given = np.where(noisy, rng.integers(0, CLASSES, n), y)
        return {"x": x.astype(np.float32), "y": given.astype(np.int32)}, noisy & (given != y)

    (train, noisy), (val, _), (test, _) = draw(800, noise), draw(40, 0.0), draw(4000, 0.0)
    return train, noisy, val, test


def init_mlp(key):
    k1, k2 = jax.random.split(key)
    return {"w1": jax.random.normal(k1, (DIM, HIDDEN)) / DIM ** 0.5, "b1": jnp.zeros(HIDDEN),
            "w2": jax.random.normal(k2, (HIDDEN, CLASSES)) / HIDDEN ** 0.5,
            "b2": jnp.zeros(CLASSES)}


def logits(p, x):
    return jax.nn.relu(x @ p["w1"] + p["b1"]) @ p["w2"] + p["b2"]


def per_example_ce(p, batch):
    logp = jax.nn.log_softmax(logits(p, batch["x"]))
    return -jnp.take_along_axis(logp, batch["y"][:, None], 1)[:, 0]


def mean_ce(p, batch):
    return jnp.mean(per_example_ce(p, batch))


OPT = optax.sgd(LR, momentum=0.9)


@functools.partial(jax.jit, static_argnames="method")
def step(state, batch, val, method):
    """One model step; returns the new state and the per-example weights used."""
    params, opt_state, phi, phi_state = state
    if method == "plain":
        grads = jax.grad(mean_ce)(params, batch)
        w = jnp.full(batch["y"].shape, 1.0 / batch["y"].shape[0])
    elif method == "l2rw":
        _, grads, w, _ = reweight.l2rw_value_and_grad(per_example_ce, mean_ce, params, batch,
                                                      val, step_size=LR)
    else:
        _, grads, (phi, phi_state), w, _ = reweight.mwn_value_and_grad(
            per_example_ce, mean_ce, params, phi, phi_state, batch, val, step_size=LR)
    updates, opt_state = OPT.update(grads, opt_state, params)
    return (optax.apply_updates(params, updates), opt_state, phi, phi_state), w


def run(method: str, data, steps: int, seed: int) -> dict:
    train, noisy, val, test = data
    params = init_mlp(jax.random.key(seed))
    phi = reweight.mwn_init(jax.random.key(seed + 1))
    state = (params, OPT.init(params), phi, reweight.mwn_optimizer().init(phi))
    rng = np.random.default_rng(seed)
    n, on_noisy, total = len(noisy), 0.0, 0.0
    for _ in range(steps):
        idx = rng.choice(n, BATCH, replace=False)
        state, w = step(state, jax.tree.map(lambda a: a[idx], train), val, method)
        w = np.asarray(w)
        on_noisy, total = on_noisy + w[noisy[idx]].sum(), total + w.sum()
    acc = float(jnp.mean(jnp.argmax(logits(state[0], test["x"]), -1) == test["y"]))
    return {"test_accuracy": acc, "weight_on_noisy": float(on_noisy / max(total, 1e-12))}


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--noise", type=float, default=0.5)
    parser.add_argument("--steps", type=int, default=400)
    args = parser.parse_args(argv)
    data = make_data(args.seed, args.noise)
    out = {"noisy_fraction": float(data[1].mean())}
    for method in ("plain", "l2rw", "mwn"):
        out[method] = run(method, data, args.steps, args.seed)
    print(json.dumps(out))
    return out


if __name__ == "__main__":
    main()
