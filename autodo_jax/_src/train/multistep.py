"""Several train steps per dispatch: a ``lax.scan`` of any step over K stacked batches.

Small models are bound by the per-call cost of a jitted step (Python, argument handling,
launch), not by their math. :func:`scan_steps` runs K steps inside one compiled program;
:func:`inner_steps` and :func:`hyper_steps` are the jitted, donating multi-step versions of
:func:`~autodo_jax._src.train.steps.inner_step` and
:func:`~autodo_jax._src.train.steps.hyper_step`, and :func:`jit_multi_step` does the same
for any other step function (e.g. a competitor's inner step).

A pass whose length is not a multiple of K ends with a dispatch whose batches are padded
(any data of the right shape, e.g. the last batch repeated) and marked ``valid=False``:
those steps leave the state untouched (``lax.cond``), so one compiled program serves every
dispatch of a pass. K = 1 with ``valid=None`` is one ordinary step.

On XLA:CPU (jax 0.10) the loop body's backward convolutions are compiled to generic,
unvectorised code (non-canonical dimension orders that the fast convolution path does not
take): a scanned small CNN step measured ~8x the CPU time of the same step called once
per batch. Use K = 1 and the plain steps on CPU; the scan pays off where a step is cheap
next to its dispatch (GPU/TPU).
"""
from __future__ import annotations

import functools
from typing import Any, Callable, Optional, Sequence

import jax
import jax.numpy as jnp
from jax import lax
from jax.sharding import Mesh

from autodo_jax._src.train.steps import hyper_step, inner_step

PyTree = Any
StepFn = Callable[..., tuple[PyTree, PyTree]]


def scan_steps(step_fn: StepFn, state: PyTree, batches: Sequence[PyTree],
               valid: Optional[jax.Array] = None) -> tuple[PyTree, PyTree]:
    """Applies ``step_fn`` once per entry of the stacked ``batches``, in order (pure).

    Args:
        step_fn: ``step_fn(state, *batch) -> (state, metrics)``, pure and traceable; the
            state keeps its structure, shapes and dtypes. A jitted step may be passed
            (its donation is ignored inside the scan; the caller's jit donates).
        state: the carried pytree (e.g. a ``TrainState``).
        batches: a tuple of pytrees, one per positional batch argument of ``step_fn``,
            every leaf with the same leading size K (step k gets leaf ``[k]``).
        valid: optional bool (K,); where False the step is skipped: the state passes
            through unchanged and its metrics are zeros (padding at the end of a pass).

    Returns:
        ``(state after the K steps, metrics)`` where every metric leaf has a leading
        axis K (zeros at skipped steps).
    """
    batches = tuple(batches)
    sizes = {leaf.shape[0] for leaf in jax.tree.leaves(batches)}
    if len(sizes) != 1:
        raise ValueError(f"scan_steps: every batch leaf needs the same leading size K, "
                         f"got sizes {sorted(sizes)}")

    def one(carry, xs):
        return step_fn(carry, *xs)

    if valid is None:
        return lax.scan(one, state, batches)
    if valid.shape != (sizes.pop(),):
        raise ValueError(f"scan_steps: valid must have shape (K,), got {valid.shape}")
    first = jax.tree.map(lambda x: x[0], batches)
    metric_shapes = jax.eval_shape(one, state, first)[1]

    def skip(carry, xs):
        del xs
        return carry, jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), metric_shapes)

    def guarded(carry, xs_valid):
        xs, ok = xs_valid
        return lax.cond(ok, one, skip, carry, xs)

    return lax.scan(guarded, state, (batches, valid))


def jit_multi_step(step_fn: StepFn) -> Callable[..., tuple[PyTree, PyTree]]:
    """A jitted ``(state, batches, valid=None) -> (state, metrics)`` running
    :func:`scan_steps` with ``step_fn``; ``state`` is donated.

    Build it once per run (each call of this function makes a new jitted callable);
    static settings are closed over, e.g. ``jit_multi_step(functools.partial(my_step,
    cfg=cfg))``.
    """
    return jax.jit(functools.partial(scan_steps, step_fn), donate_argnums=0)


@functools.partial(jax.jit, static_argnames=("cfg", "mesh"), donate_argnums=0)
def inner_steps(state: PyTree, batches: PyTree, valid: Optional[jax.Array], cfg: Any,
                mesh: Optional[Mesh] = None) -> tuple[PyTree, PyTree]:
    """K inner steps in one dispatch; the same results as K calls of ``inner_step``.

    Args:
        state: the train state (donated).
        batches: as ``inner_step``'s batch with a leading axis K on every leaf:
            ``{"images": (K, B, H, W, C), "labels": (K, B), "ids": (K, B)}``; with
            ``mesh`` sharded ``P(None, "data")``.
        valid: bool (K,) or None (all steps run); see :func:`scan_steps`.
        cfg, mesh: as for ``inner_step``.

    Returns:
        ``(new_state, metrics)``: ``inner_step``'s metrics, each with a leading axis K.
    """
    return scan_steps(lambda s, b: inner_step(s, b, cfg, mesh), state, (batches,), valid)


@functools.partial(jax.jit, static_argnames=("cfg", "mesh"), donate_argnums=0)
def hyper_steps(state: PyTree, train_batches: PyTree, val_batches: PyTree,
                valid: Optional[jax.Array], cfg: Any,
                mesh: Optional[Mesh] = None) -> tuple[PyTree, PyTree]:
    """K hyper steps in one dispatch; the same results as K calls of ``hyper_step``.

    Args:
        state: the train state (donated).
        train_batches, val_batches: ``hyper_step``'s batches with a leading axis K.
        valid: bool (K,) or None; see :func:`scan_steps`.
        cfg, mesh: as for ``hyper_step``.

    Returns:
        ``(new_state, metrics)``: ``hyper_step``'s metrics, each with a leading axis K.
    """
    return scan_steps(lambda s, t, v: hyper_step(s, t, v, cfg, mesh), state,
                      (train_batches, val_batches), valid)
