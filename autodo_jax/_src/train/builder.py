"""One step builder: the jitted steps a run calls, picked once from its configuration.

:func:`make_steps` chooses, from a ``StepConfig`` and the steps per dispatch K, which
module-level jitted step trains the model (the AutoDO inner step or a look-ahead
reweighting step), whether a hyper step exists, and whether K steps are scanned per call.
The loop then calls ``steps.train(...)``, ``steps.hyper(...)`` and ``steps.eval(...)``
without asking which method it runs. The bound steps call the same jitted functions with
the same positional static arguments as a direct call, so they share their compile
caches (and XLA program names) with them.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Callable, NamedTuple, Optional

from jax.sharding import Mesh

from autodo_jax._src.train.multistep import hyper_steps, inner_steps
from autodo_jax._src.train.reweight_steps import reweight_step, reweight_steps
from autodo_jax._src.train.step_config import StepConfig
from autodo_jax._src.train.steps import eval_step, hyper_step, inner_step


@dataclasses.dataclass(frozen=True)
class BoundStep:
    """A jitted step with its static arguments bound.

    ``step(state, *batches, valid=None) -> (state, metrics)``:

    - ``valid=None``: one step (``one``) on unstacked batches, e.g. ``{"images": (B, H,
      W, C), "labels": (B,), "ids": (B,)}``; metrics are scalars.
    - ``valid`` bool (K,): K steps in one dispatch (``many``, a ``lax.scan``) on batches
      stacked on a leading axis K (``(K, B, H, W, C)``, ...); steps where ``valid`` is
      False leave the state unchanged; metrics get a leading axis K.

    Attributes:
        one: the jitted one-step function ``one(state, *batches, *static)``.
        many: the jitted K-step function ``many(state, *batches, valid, *static)``, or
            None (built for one step per dispatch: ``valid`` must be None).
        static: the static trailing arguments (``(cfg, mesh)``, or ``(cfg,)``).
    """
    one: Callable[..., Any]
    many: Optional[Callable[..., Any]]
    static: tuple

    def _pick(self, valid: Any) -> tuple[Callable[..., Any], tuple]:
        if valid is None:
            return self.one, ()
        if self.many is None:
            raise ValueError(f"{getattr(self.one, '__name__', 'this step')} was built for one "
                             "step per dispatch (steps_per_dispatch=1): pass unstacked "
                             "batches and valid=None")
        return self.many, (valid,)

    def __call__(self, state: Any, *batches: Any, valid: Any = None) -> Any:
        fn, extra = self._pick(valid)
        return fn(state, *batches, *extra, *self.static)

    def lower(self, state: Any, *batches: Any, valid: Any = None) -> Any:
        """``jax.jit(...).lower`` of the step that a call with these arguments runs
        (arguments may be ``jax.ShapeDtypeStruct`` s)."""
        fn, extra = self._pick(valid)
        return fn.lower(state, *batches, *extra, *self.static)


class Steps(NamedTuple):
    """The steps of one run (:func:`make_steps`).

    Attributes:
        train: the model step, ``train(state, batch[, val_batch], valid=None) -> (state,
            metrics)``: ``inner_step`` / ``inner_steps`` (one train batch), or for
            ``cfg.reweight`` "l2rw" / "mwn" ``reweight_step`` / ``reweight_steps`` (a
            train batch and a clean batch of the same size).
        hyper: ``hyper(state, train_batch, val_batch, valid=None) -> (state, metrics)``
            (``hyper_step`` / ``hyper_steps``), or None when the config has no table to
            learn. Whether a run calls it (e.g. not for a table kept at its init) is the
            caller's schedule.
        eval: ``eval(state, batch) -> metrics`` (``eval_step``; batch with an optional
            "mask").
        steps_per_dispatch: K, the largest number of steps one call runs.
    """
    train: BoundStep
    hyper: Optional[BoundStep]
    eval: BoundStep
    steps_per_dispatch: int


def make_steps(cfg: StepConfig, mesh: Optional[Mesh] = None,
               steps_per_dispatch: int = 1) -> Steps:
    """The train, hyper and eval steps of ``cfg``, bound to ``cfg`` and ``mesh``.

    Args:
        cfg: the static step configuration.
        mesh: optional static mesh (axis "data") the state and batches live on.
        steps_per_dispatch: K >= 1. K = 1: every call is one plain step (``valid`` must
            be None). K >= 2: a call with ``valid`` (K,) runs the scanned K-step version
            (the results do not depend on K); a call with ``valid=None`` still runs one
            plain step (a pass shorter than two steps).

    Returns:
        :class:`Steps`. Every train and hyper step donates its state.

    Raises:
        ValueError: ``steps_per_dispatch`` < 1.
    """
    if steps_per_dispatch < 1:
        raise ValueError(f"make_steps: steps_per_dispatch must be >= 1, got "
                         f"{steps_per_dispatch}")
    multi = steps_per_dispatch > 1
    static = (cfg, mesh)
    if cfg.reweight == "none":
        train = BoundStep(inner_step, inner_steps if multi else None, static)
    else:
        train = BoundStep(reweight_step, reweight_steps if multi else None, static)
    hyper = (BoundStep(hyper_step, hyper_steps if multi else None, static)
             if cfg.learns_anything else None)
    return Steps(train, hyper, BoundStep(eval_step, None, (cfg,)), steps_per_dispatch)
