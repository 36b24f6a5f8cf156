"""The one Orbax wrapper: save a state pytree with JSON metadata and an integrity record;
restore the newest good checkpoint, re-sharded for the current devices.

A checkpoint ``<directory>/<step>`` holds

- ``state``: any pytree of arrays (typed PRNG keys are stored as their key data and
  re-wrapped on restore; zero-size arrays, which Orbax refuses, are stored as a one-element
  placeholder and rebuilt from the template), restored with the shardings of a template;
- ``meta``: a JSON dict (position, history, ...) plus ``integrity``: a 64-bit checksum of
  every array (computed on the devices by exact integer sums, so it is the same for any
  sharding and process layout), each array's shape and dtype, the devices it was written
  on, and a SHA-256 of the rest of ``meta``.

A state with a non-finite float is never written (:class:`NonFiniteStateError`).

Restoring walks the steps from newest to oldest and sorts each failure into

- *unreadable*: Orbax cannot read it (a truncated or garbled file), or a checksum differs
  (a flipped byte that Orbax reads without complaint). The step is reported, moved aside
  to ``<directory>_corrupt/<step>`` (by process 0; it could never be restored) and the
  previous step is tried;
- *mismatched*: a good checkpoint of another structure (other fields, shapes or dtypes):
  :class:`CheckpointMismatchError` in one line, and nothing is moved. Another device count
  is not a mismatch: per-example leaves whose leading axis differs only by padding (the
  table is padded to a multiple of the devices) have their ``num_rows`` real rows re-padded
  and re-sharded for the template.

Several processes: every process calls :meth:`Checkpointer.save` and
:meth:`Checkpointer.restore_latest` in the same order (Orbax writes collectively); the
processes agree on each verdict before any collective runs.
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import sys
import types
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
from jax.experimental import multihost_utils

from autodo_jax import parallel

INTEGRITY_FORMAT = 1


class CheckpointMismatchError(ValueError):
    """A readable checkpoint whose structure does not fit the state (one-line message)."""


class NonFiniteStateError(FloatingPointError):
    """The state to save holds NaN or Inf; nothing was written."""


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


# ------------------------------------------------------------------------- integrity

def _mix(h: jax.Array) -> jax.Array:
    """A 32-bit avalanche mix (every input bit flips about half of the output bits)."""
    h = h ^ (h >> 16)
    h = h * jnp.uint32(0x85EBCA6B)
    h = h ^ (h >> 13)
    h = h * jnp.uint32(0xC2B2AE35)
    return h ^ (h >> 16)


def _words(x: jax.Array) -> jax.Array:
    """The bits of `x` as uint32 words (64-bit elements give two words on a new last axis)."""
    if x.dtype == jnp.bool_:
        return x.astype(jnp.uint32)
    size = jnp.dtype(x.dtype).itemsize
    if size == 4:
        return jax.lax.bitcast_convert_type(x, jnp.uint32)
    if size in (1, 2):
        small = jnp.uint8 if size == 1 else jnp.uint16
        return jax.lax.bitcast_convert_type(x, small).astype(jnp.uint32)
    return jax.lax.bitcast_convert_type(x, jnp.uint32)


def _leaf_checksum(x: jax.Array) -> jax.Array:
    """(2,) uint32: sum over elements of mix(bits ^ mix(position + seed)) mod 2**32, for
    two seeds. Integer sums are exact and order-free, so sharding does not change it; a
    change of any one element changes it (up to a 2**-64 chance)."""
    w = _words(x)
    pos = jnp.zeros(w.shape, jnp.uint32)
    for d in range(w.ndim):
        pos = pos * jnp.uint32(w.shape[d]) + jax.lax.broadcasted_iota(jnp.uint32, w.shape, d)
    out = []
    for seed in (0x9E3779B9, 0x7F4A7C15):
        h = _mix(w ^ _mix(pos * jnp.uint32(0x01000193) + jnp.uint32(seed)))
        out.append(jnp.sum(h, dtype=jnp.uint32))
    return jnp.stack(out)


@jax.jit
def _checksums_and_finite(leaves: list[jax.Array]) -> tuple[list[jax.Array], list[jax.Array]]:
    sums = [_leaf_checksum(x) for x in leaves]
    finite = [jnp.all(jnp.isfinite(x)) if jnp.issubdtype(x.dtype, jnp.floating)
              else jnp.array(True) for x in leaves]
    return sums, finite


def _integrity(tree: Any) -> tuple[dict[str, dict[str, Any]], list[str]]:
    """``({keystr: {"checksum", "shape", "dtype"}}, keys of leaves with NaN or Inf)``."""
    flat = jax.tree_util.tree_flatten_with_path(tree)[0]
    groups: dict[Any, list[int]] = {}  # one computation per set of devices
    for i, (_, x) in enumerate(flat):
        devices = x.sharding.device_set if isinstance(x, jax.Array) else None
        groups.setdefault(frozenset(d.id for d in devices) if devices else None, []).append(i)
    if None in groups and len(groups) > 1:
        groups[next(k for k in groups if k is not None)] += groups.pop(None)
    sums, finite = [None] * len(flat), [None] * len(flat)
    for idx in groups.values():
        s, f = parallel.fetch(_checksums_and_finite([flat[i][1] for i in idx]))
        for j, i in enumerate(idx):
            sums[i], finite[i] = s[j], f[j]
    record = {jax.tree_util.keystr(p): {"checksum": f"{int(s[0]):08x}{int(s[1]):08x}",
                                        "shape": list(np.shape(x)), "dtype": str(x.dtype)}
              for (p, x), s in zip(flat, sums)}
    return record, [k for k, ok in zip(record, finite) if not ok]


def _meta_digest(meta: dict[str, Any]) -> str:
    body = {k: v for k, v in meta.items() if k != "integrity"}
    return hashlib.sha256(json.dumps(body, sort_keys=True).encode()).hexdigest()


def _agree(ok: bool) -> bool:
    """True when `ok` holds on every process (a collective on several processes)."""
    if jax.process_count() == 1:
        return ok
    return bool(np.all(multihost_utils.process_allgather(np.array([int(ok)], np.int32))))


def _drop_orbax_abandoned_reads() -> None:
    """Keeps the shard reads Orbax abandons after one read of a restore fails from printing.

    Orbax leaves the other reads suspended; when Python later closes them (at some
    collection, often at exit) Orbax turns the close into an exception, and each one prints
    an "Exception ignored" traceback. The failure itself is already logged in one line, so
    from the first failed restore on, exactly these are dropped; every other unraisable
    exception still goes to the hook that was installed. Installed once per process.
    """
    previous = sys.unraisablehook
    if getattr(previous, "_drops_orbax_abandoned_reads", False):
        return

    def hook(unraisable):
        coro = unraisable.object
        if not (isinstance(coro, types.CoroutineType)
                and coro.__qualname__ == "_read_array_index_and_device_put"
                and isinstance(getattr(unraisable.exc_value, "__cause__", None), GeneratorExit)):
            previous(unraisable)

    hook._drops_orbax_abandoned_reads = True
    sys.unraisablehook = hook


def _one_line(err: BaseException) -> str:
    return f"{type(err).__name__}: {' '.join(str(err).split())[:300]}"


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

    def save(self, step: int, state: Any, meta: dict[str, Any]) -> bool:
        """Saves asynchronously (arrays are copied before this returns).

        Returns:
          False when ``step`` is already saved (nothing written), else True.

        Raises:
          NonFiniteStateError: a float leaf of ``state`` is NaN or Inf (nothing written).
        """
        self._manager.wait_until_finished()  # (Orbax would wait too) so all_steps is current
        if int(step) in self._manager.all_steps():
            return False
        saved = _for_saving(state)
        record, bad = _integrity(saved)
        if bad:
            raise NonFiniteStateError(f"not saving step {step}: non-finite values in "
                                      f"{', '.join(bad[:4])}{', ...' if len(bad) > 4 else ''}")
        meta = json.loads(json.dumps(meta))
        meta["integrity"] = {"format": INTEGRITY_FORMAT, "arrays": record,
                             "num_devices": jax.device_count(), "meta_sha256": _meta_digest(meta)}
        args = ocp.args.Composite(state=ocp.args.StandardSave(saved),
                                  meta=ocp.args.JsonSave(meta))
        self._manager.save(int(step), args=args, force=True)
        return True

    def restore_latest(self, template: Any, *, num_rows: int | None = None
                       ) -> tuple[int, Any, dict[str, Any]] | None:
        """Restores the newest good checkpoint, shaped and sharded like `template`.

        Args:
          template: a state of the current run (arrays with their target shardings).
          num_rows: real rows of the per-example leaves; with it, a leaf saved with
            another padded row count (another device count) is re-padded.

        Returns:
          ``(step, state, meta)`` (meta without its integrity record), or None when no
          checkpoint is readable.

        Raises:
          CheckpointMismatchError: the newest readable checkpoint has another structure.
        """
        self._manager.wait_until_finished()
        steps = self.steps()
        for i in range(len(steps) - 1, -1, -1):
            step = steps[i]
            try:
                out = self._restore(step, template, num_rows)
            except _Unreadable as err:
                fallback = f"step {steps[i - 1]}" if i else "a fresh start"
                self._log(f"checkpoint step {step} in {self.directory} is corrupt ({err}); "
                          f"falling back to {fallback}")
                self._set_aside(step)
                continue
            return (step,) + out
        return None

    def _restore(self, step: int, template: Any, num_rows: int | None):
        """(state, meta) of `step`; _Unreadable or CheckpointMismatchError otherwise."""
        error = None
        try:
            meta = dict(self._manager.restore(
                step, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))["meta"])
            integrity = meta.pop("integrity")
            if _meta_digest(meta) != integrity["meta_sha256"]:
                raise ValueError("its metadata does not match its SHA-256")
        except Exception as err:  # noqa: BLE001  any failure to read means unreadable
            error, meta, integrity = _one_line(err), None, None
        if not _agree(error is None):
            raise _Unreadable(error or "unreadable on another process")
        saved = jax.tree.map(_abstract, template)
        flat, treedef = jax.tree_util.tree_flatten_with_path(saved)
        plan = _plan(flat, integrity, num_rows)  # raises CheckpointMismatchError
        try:
            restored = self._manager.restore(step, args=ocp.args.Composite(
                state=ocp.args.StandardRestore(treedef.unflatten([p[0] for p in plan]))))
            leaves = treedef.flatten_up_to(restored["state"])
        except Exception as err:  # noqa: BLE001
            error, leaves = _one_line(err), None
        if error is not None:
            _drop_orbax_abandoned_reads()
        if not _agree(error is None):
            raise _Unreadable(error or "unreadable on another process")
        record, _ = _integrity(treedef.unflatten(leaves))
        for (path, _), want in zip(flat, record.values()):
            key = jax.tree_util.keystr(path)
            if integrity["arrays"][key]["checksum"] != want["checksum"]:
                raise _Unreadable(f"checksum of {key} differs from the one saved with it")
        leaves = [fix(x) for x, (_, fix) in zip(leaves, plan)]
        if integrity["num_devices"] != jax.device_count():
            padded = any(fix is not _same for _, fix in plan)
            self._log(f"checkpoint step {step} was written on {integrity['num_devices']} "
                      f"devices; restored onto {jax.device_count()} (tables re-sharded"
                      f"{', padding rows re-padded' if padded else ''})")
        return _rebuild(template, treedef.unflatten(leaves)), meta

    def _set_aside(self, step: int) -> None:
        """Moves an unreadable step to ``<directory>_corrupt/`` (process 0), then all reload."""
        if jax.process_index() == 0:
            src = os.path.join(self.directory, str(step))
            dst = os.path.join(self.directory + "_corrupt", str(step))
            if os.path.isdir(src):
                os.makedirs(os.path.dirname(dst), exist_ok=True)
                shutil.rmtree(dst, ignore_errors=True)
                shutil.move(src, dst)
        parallel.barrier(f"autodo_jax:set_aside:{step}")
        self._manager.reload()

    def wait(self) -> None:
        self._manager.wait_until_finished()

    def close(self) -> None:
        self._manager.wait_until_finished()
        self._manager.close()


class _Unreadable(Exception):
    """This step cannot be read back as it was written."""


def _same(x):
    return x


def _plan(flat, integrity: dict[str, Any], num_rows: int | None):
    """For each template leaf: (what to restore, how to finish it).

    A leaf saved with the template's shape is restored in place. A per-example leaf saved
    with another padded row count (both counts >= num_rows, other axes equal) is restored
    at its saved shape (data-sharded when the devices divide it, else replicated) and its
    real rows are re-padded into the template's shape and sharding.

    Raises:
      CheckpointMismatchError: fields, dtypes or shapes that differ otherwise.
    """
    saved = integrity["arrays"]
    want = {jax.tree_util.keystr(p): x for p, x in flat}
    problems = [f"{k} missing in checkpoint" for k in want if k not in saved]
    problems += [f"{k} not in this state" for k in saved if k not in want]
    plan = []
    for key, x in want.items():
        if key not in saved:
            continue
        shape, dtype = tuple(saved[key]["shape"]), saved[key]["dtype"]
        if dtype != str(x.dtype):
            problems.append(f"{key} has dtype {dtype}, this state {x.dtype}")
        elif shape == tuple(x.shape):
            plan.append((x, _same))
        elif (num_rows is not None and len(shape) == len(x.shape) >= 1
              and shape[1:] == tuple(x.shape[1:]) and min(shape[0], x.shape[0]) >= num_rows):
            plan.append(_repad(x, shape, num_rows))
        else:
            problems.append(f"{key} has shape {shape}, this state {tuple(x.shape)}")
    if problems:
        raise CheckpointMismatchError(
            f"written for another state ({'; '.join(problems[:3])}"
            f"{'; ...' if len(problems) > 3 else ''})")
    return plan


def _repad(x: jax.ShapeDtypeStruct, saved_shape: tuple[int, ...], num_rows: int):
    """(how to read a leaf saved at `saved_shape`, how to re-pad it into `x`)."""
    read = parallel.row_read_sharding(x.sharding, saved_shape[0])
    return (jax.ShapeDtypeStruct(saved_shape, x.dtype, sharding=read),
            lambda a: parallel.repad_rows(a, num_rows, x.shape[0], x.sharding))
