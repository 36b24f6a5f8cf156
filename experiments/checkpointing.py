"""A thin wrapper around Orbax: save a state pytree plus JSON metadata; resume from the
newest good checkpoint.

Kept small on purpose so that Orbax API changes stay in one file. A checkpoint holds

- ``state``: any pytree of arrays (typed PRNG keys are stored as their key data and
  re-wrapped on restore; zero-size arrays, which Orbax refuses, are stored as a
  placeholder and rebuilt from the template), restored with the shardings of a template;
- ``meta``: a JSON-serialisable dict (epoch, data position, evaluation history, ...).

Restoring walks the steps from newest to oldest; a checkpoint that fails to restore is
reported (which step, and why), moved aside to ``<directory>_corrupt/<step>``, and the
previous one is tried.
"""
from __future__ import annotations

import os
import shutil
from typing import Any, Callable

import jax
import numpy as np
import orbax.checkpoint as ocp


def _is_key(x: Any) -> bool:
    return isinstance(x, jax.Array) and jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key)


def _is_empty(x: Any) -> bool:
    return np.size(x) == 0


def _placeholder(x) -> np.ndarray:
    """Orbax refuses zero-size arrays: they are stored as one zero and rebuilt on restore."""
    return np.zeros((1,), np.asarray(x).dtype if not isinstance(x, jax.Array) else x.dtype)


def _for_saving(tree):
    def one(x):
        if _is_key(x):
            x = jax.random.key_data(x)
        return _placeholder(x) if _is_empty(x) else x
    return jax.tree.map(one, tree)


def _abstract(x):
    if _is_key(x):
        x = jax.random.key_data(x)
    if _is_empty(x):
        return jax.ShapeDtypeStruct((1,), x.dtype)
    if isinstance(x, jax.Array):
        return jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding)
    return jax.ShapeDtypeStruct(np.shape(x), np.asarray(x).dtype)


def _rebuild(template, restored):
    """Typed keys re-wrapped, zero-size leaves taken from the template."""
    def one(t, r):
        if _is_key(t):
            return jax.random.wrap_key_data(r, impl=jax.random.key_impl(t))
        return t if _is_empty(t) else r
    return jax.tree.map(one, template, restored)


class Checkpointer:
    """Saves and restores ``(state, meta)`` under ``directory``.

    Args:
      directory: folder of the step-numbered checkpoints (created on the first save).
      max_to_keep: newest checkpoints kept (>= 2, so a corrupt newest one has a fallback).
      log: callable taking one message line (default: print).
    """

    def __init__(self, directory: str, *, max_to_keep: int = 3,
                 log: Callable[[str], None] = print):
        if max_to_keep < 2:
            raise ValueError(f"max_to_keep must be >= 2, got {max_to_keep}")
        self.directory = os.path.abspath(directory)
        self._log = log
        options = ocp.CheckpointManagerOptions(max_to_keep=max_to_keep, create=True)
        self._manager = ocp.CheckpointManager(self.directory, options=options)

    def steps(self) -> list[int]:
        return sorted(self._manager.all_steps())

    def save(self, step: int, state: Any, meta: dict[str, Any]) -> None:
        """Saves asynchronously; the state's arrays are copied before this returns."""
        args = ocp.args.Composite(state=ocp.args.StandardSave(_for_saving(state)),
                                  meta=ocp.args.JsonSave(meta))
        self._manager.save(int(step), args=args, force=True)

    def restore_latest(self, template: Any) -> tuple[int, Any, dict[str, Any]] | None:
        """Restores the newest checkpoint that loads, shaped and sharded like `template`.

        Returns:
          ``(step, state, meta)``, or None when no checkpoint loads.
        """
        self._manager.wait_until_finished()
        abstract = jax.tree.map(_abstract, template)
        steps = self.steps()
        for i in range(len(steps) - 1, -1, -1):
            step = steps[i]
            try:
                out = self._manager.restore(step, args=ocp.args.Composite(
                    state=ocp.args.StandardRestore(abstract), meta=ocp.args.JsonRestore()))
                state = _rebuild(template, out["state"])
                return step, state, dict(out["meta"])
            except Exception as err:  # noqa: BLE001  any failure means this step is unusable
                reason = " ".join(str(err).split())[:300]
                fallback = f"step {steps[i - 1]}" if i else "a fresh start"
                self._log(f"checkpoint step {step} in {self.directory} is corrupt "
                          f"({type(err).__name__}: {reason}); falling back to {fallback}")
                self._set_aside(step)
        return None

    def _set_aside(self, step: int) -> None:
        src = os.path.join(self.directory, str(step))
        dst = os.path.join(self.directory + "_corrupt", str(step))
        if os.path.isdir(src):
            os.makedirs(os.path.dirname(dst), exist_ok=True)
            shutil.rmtree(dst, ignore_errors=True)
            shutil.move(src, dst)
        self._manager.reload()

    def wait(self) -> None:
        self._manager.wait_until_finished()

    def close(self) -> None:
        self._manager.wait_until_finished()
        self._manager.close()
