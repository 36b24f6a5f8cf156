"""Cost of the learned augmentation relative to one inner training step.

Usage::

    python -m benchmarks.augment_cost [--quick] [--batch 256]

For each image shape (32x32x3 next to WRN-28-2, 28x28x1 next to the MNIST ResNet) and
warp super-sampling factor (1 and 4) it times, at the same batch:

* ``augment``: forward + backward of ``augment.augment`` with respect to per-example
  parameters (B, 7) (what a hyper step adds on top of the model), jit-compiled;
* ``inner``: one plain training step of the model: forward in train mode (BatchNorm
  statistics updated), cross-entropy, backward to all parameters and an SGD-Nesterov update.

Both are timed in interleaved rounds (median of per-call times) so that load drift on a
shared machine hits both alike. Prints one JSON line per case, ``{"shape", "model",
"batch", "upsample", "augment_ms", "augment_fwd_ms", "inner_ms", "augment_over_inner",
"compile_s"}``, and finally ``{"augment_over_inner_wrn28_2": ..., ...}`` (upsample 1;
``_up4`` keys for upsample 4). Target: <= 0.10 at upsample 1.
"""
from __future__ import annotations

import argparse
import json
import statistics
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax

from autodo_jax import augment
from autodo_jax.models import get_model, init_variables

CASES = (("wrn28_2", (32, 32, 3)), ("mnist_resnet", (28, 28, 1)))
CLASSES = 10


def _inner_step(model, tx):
    def step(variables, opt_state, images, labels):
        def loss(params):
            logits, updates = model.apply({"params": params, "batch_stats": variables["batch_stats"]},
                                          images, train=True, mutable=["batch_stats"])
            ce = optax.softmax_cross_entropy_with_integer_labels(logits, labels)
            return jnp.mean(ce), updates["batch_stats"]
        grads, stats = jax.grad(loss, has_aux=True)(variables["params"])
        updates, opt_state = tx.update(grads, opt_state, variables["params"])
        params = optax.apply_updates(variables["params"], updates)
        return {"params": params, "batch_stats": stats}, opt_state
    return jax.jit(step)


def _augment_grad(upsample):
    def loss(params, key, images, probe):
        return jnp.sum(augment.augment(key, images, params, upsample=upsample) * probe)
    return jax.jit(jax.grad(loss))


def _timed(fn, *args):
    start = time.perf_counter()
    jax.block_until_ready(fn(*args))
    return time.perf_counter() - start


def run_case(model_name, shape, batch, upsamples, rounds, steps):
    rng = np.random.default_rng(0)
    images = jnp.asarray(rng.normal(size=(batch,) + shape), jnp.float32)
    probe = jnp.asarray(rng.normal(size=images.shape), jnp.float32)
    labels = jnp.asarray(rng.integers(0, CLASSES, batch), jnp.int32)
    params = augment.init_params(batch)
    key = jax.random.PRNGKey(0)
    model = get_model(model_name, CLASSES)
    variables = init_variables(model, jax.random.PRNGKey(1), shape)
    tx = optax.sgd(0.1, momentum=0.9, nesterov=True)
    opt_state = tx.init(variables["params"])
    inner = _inner_step(model, tx)
    compile_s = {"inner": _timed(inner, variables, opt_state, images, labels)}
    aug_fns = {}
    for up in upsamples:
        grad_fn = _augment_grad(up)
        fwd_fn = jax.jit(lambda k, x, up=up: augment.augment(k, x, params, upsample=up))
        compile_s[f"augment_up{up}"] = _timed(grad_fn, params, key, images, probe)
        _timed(fwd_fn, key, images)
        aug_fns[up] = (grad_fn, fwd_fn)
    times = {"inner": []}
    times.update({(up, kind): [] for up in upsamples for kind in ("grad", "fwd")})
    for _ in range(rounds):  # interleaved: inner, then every augment variant, per round
        for _ in range(steps):
            times["inner"].append(_timed(inner, variables, opt_state, images, labels))
        for up, (grad_fn, fwd_fn) in aug_fns.items():
            for _ in range(steps):
                times[(up, "grad")].append(_timed(grad_fn, params, key, images, probe))
                times[(up, "fwd")].append(_timed(fwd_fn, key, images))
    inner_ms = 1e3 * statistics.median(times["inner"])
    results = []
    for up in upsamples:
        aug_ms = 1e3 * statistics.median(times[(up, "grad")])
        row = {"shape": "x".join(map(str, shape)), "model": model_name, "batch": batch,
               "upsample": up, "augment_ms": round(aug_ms, 2),
               "augment_fwd_ms": round(1e3 * statistics.median(times[(up, "fwd")]), 2),
               "inner_ms": round(inner_ms, 1), "augment_over_inner": round(aug_ms / inner_ms, 4),
               "compile_s": {k: round(v, 1) for k, v in compile_s.items()}}
        print(json.dumps(row), flush=True)
        results.append(row)
    return results


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer timed rounds")
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--upsample", default="1,4", help="comma-separated factors")
    args = parser.parse_args(argv)
    rounds, steps = (2, 1) if args.quick else (3, 3)
    upsamples = tuple(int(u) for u in args.upsample.split(","))
    summary = {}
    for model_name, shape in CASES:
        for row in run_case(model_name, shape, args.batch, upsamples, rounds, steps):
            suffix = "" if row["upsample"] == 1 else f"_up{row['upsample']}"
            summary[f"augment_over_inner_{model_name}{suffix}"] = row["augment_over_inner"]
    print(json.dumps(summary), flush=True)


if __name__ == "__main__":
    main()
