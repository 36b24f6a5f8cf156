"""Cost of ``autodo_jax.implicit.hypergrad`` modes, solvers and curvatures on a frozen conv
encoder + linear head (AutoDO's hyper step shape), against one ordinary train step.

Model: 28x28x1 inputs -> conv3x3(32)+ReLU+avgpool2 -> conv3x3(64)+ReLU+avgpool2 ->
dense(128)+ReLU -> head dense(10). Hyperparameters per example: a loss-weight logit (B,)
and an additive input perturbation (B, 28, 28, 1), so the hypergradient has to flow back
through the frozen encoder to the inputs. θ = the head only.

Prints one JSON object per line: {"name", "ms_median", "ms_min", "repeats"}, then
{"hyper_over_inner": ...} = AutoDO's hypergrad (neumann(5, 0.01), hessian, default mode)
divided by one full train step (forward + backward to all weights + SGD update).

    python benchmarks/hypergrad_modes.py [--quick] [--batch 256]
"""
from __future__ import annotations

import argparse
import json
import math
import time

import jax
import jax.numpy as jnp
import numpy as np

from autodo_jax.implicit import CURVATURES, MODES, cg, hypergrad, identity, neumann, nystrom
from autodo_jax.losses import cross_entropy, loss_weight

NUM_CLASSES = 10


def init_encoder(key):
    k1, k2, k3 = jax.random.split(key, 3)
    he = lambda k, shape, fan_in: jax.random.normal(k, shape) * math.sqrt(2.0 / fan_in)
    return {"c1": he(k1, (3, 3, 1, 32), 9), "b1": jnp.zeros(32),
            "c2": he(k2, (3, 3, 32, 64), 9 * 32), "b2": jnp.zeros(64),
            "d": he(k3, (7 * 7 * 64, 128), 7 * 7 * 64), "bd": jnp.zeros(128)}


def _conv(x, w, b):
    y = jax.lax.conv_general_dilated(x, w, (1, 1), "SAME",
                                     dimension_numbers=("NHWC", "HWIO", "NHWC"))
    return jax.nn.relu(y + b)


def _pool(x):
    n, h, w, c = x.shape
    return x.reshape(n, h // 2, 2, w // 2, 2, c).mean(axis=(2, 4))


def encode(enc, images):
    x = _pool(_conv(images, enc["c1"], enc["b1"]))
    x = _pool(_conv(x, enc["c2"], enc["b2"]))
    return jax.nn.relu(x.reshape(x.shape[0], -1) @ enc["d"] + enc["bd"])


def head_apply(head, feats):
    return feats @ head["kernel"] + head["bias"]


def make_losses(enc):
    """AutoDO-shaped losses with the encoder frozen (closed over)."""

    def train_outputs(head, hp, batch):
        return head_apply(head, encode(enc, batch["images"] + hp["delta"]))

    def per_example_loss(head, hp, batch):
        return loss_weight(hp["w"]) * cross_entropy(train_outputs(head, hp, batch), batch["labels"])

    def output_loss(logits, hp, batch):
        return jnp.mean(loss_weight(hp["w"]) * cross_entropy(logits, batch["labels"]))

    def train_loss(head, hp, batch):
        return jnp.mean(per_example_loss(head, hp, batch))

    def val_loss(head, batch):
        return jnp.mean(cross_entropy(head_apply(head, encode(enc, batch["images"])),
                                      batch["labels"]))

    return train_loss, val_loss, train_outputs, output_loss, per_example_loss


def full_loss(params, batch):
    logits = head_apply(params["head"], encode(params["encoder"], batch["images"]))
    return jnp.mean(cross_entropy(logits, batch["labels"]))


@jax.jit
def train_step(params, batch):
    """One ordinary SGD step: forward + backward to every weight + update."""
    grads = jax.grad(full_loss)(params, batch)
    return jax.tree_util.tree_map(lambda p, g: p - 0.01 * g, params, grads)


def time_all(cases, repeats):
    """Time jitted ``cases`` {name: (fn, args)} in interleaved rounds (one call of each per
    round), so that load from other processes on a shared machine hits all of them alike."""
    for fn, fn_args in cases.values():
        jax.block_until_ready(fn(*fn_args))  # compile + warm-up
    times = {name: [] for name in cases}
    for _ in range(repeats):
        for name, (fn, fn_args) in cases.items():
            start = time.perf_counter()
            jax.block_until_ready(fn(*fn_args))
            times[name].append(1e3 * (time.perf_counter() - start))
    rows = {}
    for name, ts in times.items():
        rows[name] = {"name": name, "ms_median": round(float(np.median(ts)), 2),
                      "ms_min": round(float(np.min(ts)), 2), "repeats": repeats}
        print(json.dumps(rows[name]), flush=True)
    return rows


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="3 repeats, fewer variants")
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--repeats", type=int, default=None)
    args = parser.parse_args()
    repeats = args.repeats or (3 if args.quick else 10)
    b = args.batch
    k_enc, k_head, k_x, k_v, k_y = jax.random.split(jax.random.key(0), 5)
    enc = init_encoder(k_enc)
    head = {"kernel": 0.05 * jax.random.normal(k_head, (128, NUM_CLASSES)),
            "bias": jnp.zeros(NUM_CLASSES)}
    batch = {"images": jax.random.normal(k_x, (b, 28, 28, 1)),
             "labels": jax.random.randint(k_y, (b,), 0, NUM_CLASSES)}
    val = {"images": jax.random.normal(k_v, (b, 28, 28, 1)), "labels": batch["labels"][::-1]}
    hp = {"w": jnp.zeros(b), "delta": jnp.zeros((b, 28, 28, 1))}
    train_loss, val_loss, train_outputs, output_loss, per_example_loss = make_losses(enc)
    extra = dict(train_outputs=train_outputs, output_loss=output_loss,
                 per_example_loss=per_example_loss)

    def hyper(solver, curvature="hessian", mode=MODES[0]):
        return jax.jit(lambda head, hp, tb, vb: hypergrad(
            train_loss, val_loss, head, hp, tb, vb, solver=solver, curvature=curvature,
            mode=mode, **extra))

    hargs = (head, hp, batch, val)
    cases = {"inner_train_step": (train_step, ({"encoder": enc, "head": head}, batch))}
    # the floor: one train forward + one backward to the inputs/λ + one val forward
    floor = jax.jit(lambda head, hp, tb, vb: (jax.grad(train_loss, argnums=1)(head, hp, tb),
                                               val_loss(head, vb)))
    cases["floor/train_fwd_bwd_to_lambda+val_fwd"] = (floor, hargs)
    cases["piece/val_grad_head"] = (jax.jit(jax.grad(val_loss)), (head, val))
    # mixed derivative alone, for a fixed u: reverse-over-reverse vs reverse-over-forward
    loss = lambda th, lam: train_loss(th, lam, batch)
    u = jax.tree_util.tree_map(jnp.ones_like, head)
    rev_rev = jax.jit(lambda th, lam, u: jax.vjp(lambda l: jax.grad(loss)(th, l), lam)[1](u)[0])
    rev_fwd = jax.jit(lambda th, lam, u: jax.grad(
        lambda l: jax.jvp(lambda t: loss(t, l), (th,), (u,))[1])(lam))
    cases["mixed/reverse_over_reverse"] = (rev_rev, (head, hp, u))
    cases["mixed/reverse_over_forward"] = (rev_fwd, (head, hp, u))
    # whole hypergradient per differentiation mode (default solver and curvature)
    for mode in MODES:
        cases[f"mode/{mode}"] = (hyper(solver=neumann(5, 0.01), mode=mode), hargs)
    solvers = {"identity": identity(), "neumann5": neumann(5, 0.01), "cg5": cg(5, tol=0.0),
               "nystrom5": nystrom(5, 1e-3, jax.random.key(1))}
    if not args.quick:
        solvers.update({"neumann20": neumann(20, 0.01), "cg20": cg(20, tol=0.0),
                        "nystrom20": nystrom(20, 1e-3, jax.random.key(1))})
    for name, solver in solvers.items():
        cases[f"solver/{name}"] = (hyper(solver=solver), hargs)
    for curvature in CURVATURES:
        cases[f"curvature/{curvature}+cg5"] = (hyper(solver=cg(5, tol=0.0), curvature=curvature), hargs)
    cases["hypergrad_default"] = (hyper(solver=neumann(5, 0.01)), hargs)  # AutoDO's default
    rows = time_all(cases, repeats)
    ratio = rows["hypergrad_default"]["ms_median"] / rows["inner_train_step"]["ms_median"]
    ratio_min = rows["hypergrad_default"]["ms_min"] / rows["inner_train_step"]["ms_min"]
    print(json.dumps({"hyper_over_inner": round(ratio, 3),
                      "hyper_over_inner_min": round(ratio_min, 3),
                      "batch": b, "device": jax.devices()[0].device_kind}), flush=True)


if __name__ == "__main__":
    main()
