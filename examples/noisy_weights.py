"""Per-example loss weights on a noisy logistic regression, two ways.

A logistic regression is trained on 300 points where 40 % of the positive labels read
negative (biased noise: the unweighted fit shifts its boundary); 40 clean validation
points are available. Two ways to weight the train examples:

* **implicit** (AutoDO's λ_W): one weight w_n = softplus(λ_n)/ln 2 per example, learned by
  hypergradient descent through the exact inner optimum (``implicit.hypergrad``, CG);
* **L2RW** (``reweight.l2rw_weights``): weights from a one-step look-ahead at every step of
  a gradient-descent training run, nothing stored.

The script reports, for each, how well the weights separate clean from noisy examples
(AUC), the share of L2RW's weight that goes to noisy examples and the clean test accuracy,
next to the unweighted fit (means over data seeds, and each seed).

    python examples/noisy_weights.py          # prints one JSON line
"""
from __future__ import annotations

import argparse
import json

import jax
import jax.numpy as jnp
import numpy as np

from autodo_jax import implicit, reweight

L2 = 1e-2


def make_data(seed: int, noise: float):
    rng = np.random.default_rng(seed)
    w = rng.normal(size=10)

    def draw(n, flip):
        x = rng.normal(size=(n, 10))
        y = (x @ w > 0).astype(np.float64)
        noisy = (y == 1) & (rng.random(n) < flip)     # biased noise: positives read 0
        return jnp.asarray(x), jnp.asarray(np.where(noisy, 0.0, y)), noisy

    return draw(300, noise), draw(40, 0.0)[:2], draw(2000, 0.0)[:2]


def per_example_nll(theta, batch):
    x, y = batch
    z = x @ theta
    return jnp.logaddexp(0.0, z) - y * z


def val_nll(theta, batch):
    return jnp.mean(per_example_nll(theta, batch))


def weights_of(lam):
    return jax.nn.softplus(lam) / jnp.log(2.0)


def train_loss(theta, hp, batch):
    return (jnp.mean(weights_of(hp["lam"]) * per_example_nll(theta, batch))
            + 0.5 * L2 * theta @ theta)


@jax.jit
def solve(hp, batch):
    """θ*(λ): 25 Newton steps from 0."""
    def newton(theta, _):
        g = jax.grad(train_loss)(theta, hp, batch)
        return theta - jnp.linalg.solve(jax.hessian(train_loss)(theta, hp, batch), g), None
    return jax.lax.scan(newton, jnp.zeros(batch[0].shape[1]), None, length=25)[0]


@jax.jit
def implicit_step(hp, train, val, lr):
    theta = solve(hp, train)
    grads, _ = implicit.hypergrad(train_loss, val_nll, theta, hp, train, val,
                                  solver=implicit.cg(20))
    g = grads["lam"]
    return {"lam": hp["lam"] - lr * g / (jnp.max(jnp.abs(g)) + 1e-12)}


@jax.jit
def l2rw_step(theta, mass, train, val, noisy):
    """One gradient step on Σ w_i ℓ_i + L2, w from L2RW; accumulates the weight each
    example receives."""
    loss = lambda th, b: per_example_nll(th, b)
    (_, _), grads, w, _ = reweight.l2rw_value_and_grad(loss, val_nll, theta, train, val)
    return theta - 0.5 * (grads + L2 * theta), mass + w


def auc(scores, positive):
    scores, positive = np.asarray(scores), np.asarray(positive, bool)
    diff = scores[positive][:, None] - scores[~positive][None, :]
    return float(np.mean((diff > 0) + 0.5 * (diff == 0)))


def accuracy(theta, batch):
    x, y = batch
    return float(jnp.mean((x @ theta > 0) == (y > 0.5)))


def run(seed: int, noise: float, outer_steps: int, l2rw_steps: int) -> dict:
    (x, y, noisy), val, test = make_data(seed, noise)
    train = (x, y)
    hp = {"lam": jnp.zeros(len(y))}
    plain = solve(hp, train)
    for t in range(outer_steps):
        hp = implicit_step(hp, train, val, 0.5 * 0.97 ** t)
    theta, mass = jnp.zeros(10), jnp.zeros(len(y))
    for _ in range(l2rw_steps):
        theta, mass = l2rw_step(theta, mass, train, val, noisy)
    return {
        "noisy_fraction": float(noisy.mean()),
        "unweighted_test_accuracy": accuracy(plain, test),
        "implicit_weight_auc": auc(weights_of(hp["lam"]), ~noisy),
        "implicit_test_accuracy": accuracy(solve(hp, train), test),
        "l2rw_weight_auc": auc(mass, ~noisy),
        "l2rw_weight_on_noisy": float(mass[noisy].sum() / mass.sum()),
        "l2rw_test_accuracy": accuracy(theta, test),
    }


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=3, help="seeds 0..seeds-1 (data draws)")
    parser.add_argument("--noise", type=float, default=0.4)
    parser.add_argument("--outer_steps", type=int, default=60)
    parser.add_argument("--l2rw_steps", type=int, default=300)
    args = parser.parse_args(argv)
    with jax.enable_x64(True):
        runs = [run(s, args.noise, args.outer_steps, args.l2rw_steps) for s in range(args.seeds)]
    out = {k: float(np.mean([r[k] for r in runs])) for k in runs[0]}
    out["per_seed"] = runs
    print(json.dumps(out))
    return out


if __name__ == "__main__":
    main()
