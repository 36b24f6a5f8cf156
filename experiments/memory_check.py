"""Will the run's steps fit in device memory? Checked before anything is written.

The flags whose product decides a step's memory are the batch sizes (per device), the
model, the image size and ``--upsample`` (the learned warp samples a ``--upsample``-fold
larger copy of every image). ``check(config, data, mesh, pipes, step_cfg)`` estimates the
memory of each step the run will call (inner, hyper, evaluation) on one device, in up to
two tiers, and compares it with the device's memory (``device_memory``):

1. From shapes alone, in milliseconds: the train state (``jax.eval_shape``), and per
   example a model profile (two abstract traces of the forward pass, cached per model and
   image shape) plus the upsampled images of the warp. ``lower``: what must be held at
   once (state, the inputs of every convolution and matrix product kept for the backward
   pass, the upsampled images); ``typical``: a generous estimate (every intermediate of
   the forward pass kept, twice over). A step whose lower bound exceeds the memory is
   refused; one whose generous estimate fits passes.
2. Otherwise the step is compiled as the run will call it (the run then reuses the
   compiled program) and XLA's memory analysis decides.

A step that does not fit is one ``ConfigError`` line naming the flags, the estimate and
the device memory.
"""
from __future__ import annotations

import dataclasses
import functools
import os
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np

from autodo_jax import models, parallel, train
from autodo_jax.data import pipeline
from experiments import config as cfg_lib, methods
from experiments.pipes import Pipes, default_steps_per_dispatch, dispatches, loader_position
from experiments.run_setup import ConfigError, Data

GIB = float(1 << 30)


def device_memory(config: cfg_lib.Config) -> tuple[float | None, str]:
    """(bytes one device may use, where the figure comes from); None when unknown.

    ``--device_memory_gb`` when given; else what the device reports (``bytes_limit``, the
    memory XLA may allocate on a GPU/TPU); on CPU the physical memory shared by the local
    CPU devices.
    """
    if config.device_memory_gb:
        return config.device_memory_gb * GIB, "--device_memory_gb"
    device = jax.local_devices()[0]
    try:
        stats = device.memory_stats() or {}
    except Exception:  # noqa: BLE001  some backends do not implement it
        stats = {}
    if stats.get("bytes_limit"):
        return float(stats["bytes_limit"]), f"{device.platform} device memory"
    if device.platform == "cpu" and hasattr(os, "sysconf"):
        total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
        total = min(total, _cgroup_limit() or total)
        n = jax.local_device_count()
        return total / n, f"host memory / {n} CPU device{'s' if n > 1 else ''}"
    return None, "unknown"


def _cgroup_limit(path: str = "/sys/fs/cgroup/memory.max") -> int | None:
    """The memory limit of this process's cgroup (a container's), or None."""
    try:
        with open(path) as f:
            text = f.read().strip()
    except OSError:
        return None
    return int(text) if text.isdigit() else None


def _nbytes(aval: Any) -> int:
    shape = getattr(aval, "shape", None)
    if shape is None or not hasattr(aval, "dtype"):
        return 0
    return int(np.prod(shape, dtype=np.int64)) * np.dtype(aval.dtype).itemsize


def _sub_jaxprs(eqn: Any) -> list[Any]:
    out = []
    for value in eqn.params.values():
        for v in value if isinstance(value, (tuple, list)) else (value,):
            if hasattr(v, "jaxpr") and hasattr(v, "consts"):
                out.append(v.jaxpr)
            elif hasattr(v, "eqns"):
                out.append(v)
    return out


def _forward_bytes(jaxpr: Any) -> tuple[int, int]:
    """(bytes of every intermediate, bytes of the distinct inputs of the convolutions and
    matrix products) of a jaxpr, nested jaxprs included."""
    total = kept = 0
    seen = set()
    for eqn in jaxpr.eqns:
        subs = _sub_jaxprs(eqn)
        if subs:
            inner = [_forward_bytes(j) for j in subs]
            total += max(t for t, _ in inner)
            kept += max(k for _, k in inner)
        else:
            total += sum(_nbytes(v.aval) for v in eqn.outvars)
        if eqn.primitive.name in ("conv_general_dilated", "dot_general"):
            x = eqn.invars[0]
            if hasattr(x, "aval") and not hasattr(x, "val") and id(x) not in seen:
                seen.add(id(x))
                kept += _nbytes(x.aval)
    return total, kept


@dataclasses.dataclass(frozen=True)
class ModelProfile:
    """Bytes of a model's forward pass per example (train mode).

    Attributes:
      forward: every intermediate value of the forward pass.
      kept: the inputs of its convolutions and matrix products (held for the backward).
    """
    forward: int
    kept: int


@functools.lru_cache(maxsize=64)
def model_profile(model: str, num_classes: int, image_shape: tuple[int, int, int],
                  compute_dtype: str) -> ModelProfile:
    """The per-example forward-pass bytes of ``model`` on images of ``image_shape``: the
    difference of two abstract traces (batch 2 minus batch 1; nothing is compiled)."""
    net = models.get_model(model, num_classes, dtype=jnp.dtype(compute_dtype))
    variables = jax.eval_shape(lambda k: models.init_variables(net, k, image_shape),
                               jax.random.key(0))

    def forward(v, x):
        feats, _ = models.encode(net, v["params"], v["batch_stats"], x, train=True)
        return models.head_apply(v["params"]["head"], feats)

    sizes = [_forward_bytes(jax.make_jaxpr(forward)(
        variables, jax.ShapeDtypeStruct((b, *image_shape), jnp.float32)).jaxpr) for b in (1, 2)]
    return ModelProfile(forward=sizes[1][0] - sizes[0][0], kept=sizes[1][1] - sizes[0][1])


@dataclasses.dataclass(frozen=True)
class StepNeed:
    """Bytes one step needs on one device: ``lower`` (certain), ``typical`` (generous)."""
    step: str                  # "inner step" | "hyper step" | "evaluation step"
    flags: str                 # the flags (and image size) that decide it, for messages
    lower: float
    typical: float
    warp: float                # of which the upsampled images of the warp
    upsample: int = 1


def _tree_bytes(tree: Any) -> int:
    return sum(_nbytes(x) for x in jax.tree.leaves(tree))


def _state_bytes(step_cfg: train.StepConfig, image_shape: tuple, num_rows: int,
                 num_devices: int) -> int:
    """Bytes of the train state on one device (its table shard), from shapes alone."""
    labels = np.zeros(2, np.int32)   # two rows tell per-example fields from shared ones
    two = train.autodo_table_init(labels, step_cfg.num_classes, aug=step_cfg.learn_aug,
                                  shared_aug=step_cfg.shared_aug,
                                  weight=step_cfg.learn_weight, soft=step_cfg.learn_soft)
    rows = parallel.padded_num_rows(num_rows, num_devices) // num_devices
    table = {k: jax.ShapeDtypeStruct((rows if v.shape[0] == 2 else 1, *v.shape[1:]), v.dtype)
             for k, v in two.items()}
    state = jax.eval_shape(lambda t: train.create_train_state(
        jax.random.key(0), step_cfg, t, image_shape), table)
    return _tree_bytes(state)


def step_needs(config: cfg_lib.Config, step_cfg: train.StepConfig, image_shape: tuple,
               num_rows: int, num_devices: int, hyper_batch: int) -> list[StepNeed]:
    """Per-device estimates of every step the run calls (from shapes; nothing compiled)."""
    c, h, w, ch = config, *image_shape
    prof = model_profile(c.model, step_cfg.num_classes, tuple(image_shape), c.compute_dtype)
    state = _state_bytes(step_cfg, tuple(image_shape), num_rows, num_devices)
    params = _tree_bytes(jax.eval_shape(lambda k: models.init_variables(
        train.model_from_config(step_cfg), k, tuple(image_shape)), jax.random.key(0)))
    image = h * w * ch * 4
    warp = image * c.upsample ** 2 if step_cfg.learn_aug and c.upsample > 1 else 0
    pics = f"{h}x{w}x{ch} images"
    up = f", --upsample={c.upsample}" if warp else ""
    per = lambda b: -(-b // num_devices)   # noqa: E731  rows of a batch on one device
    b = per(c.batch_size)
    look = 2 if step_cfg.reweight != "none" else 1    # l2rw / mwn: a look-ahead and a clean batch
    out = [StepNeed("inner step", f"--batch_size={c.batch_size} ({b} per device), "
                    f"--model={c.model}, {pics}{up}",
                    lower=state + params + b * (look * (prof.kept + image) + warp),
                    typical=state + 4 * params + b * look * (2 * prof.forward + image) + 2 * b * warp,
                    warp=b * warp, upsample=c.upsample)]
    if methods.get(c.method).hyper_steps:
        hb = per(hyper_batch)
        given = (f"--hyper_batch_size={c.hyper_batch_size} (" if c.hyper_batch_size else
                 f"--hyper_batch_size=0 (auto: {hyper_batch}; ")
        out.append(StepNeed("hyper step", f"{given}{hb} per device), --model={c.model}, "
                            f"{pics}{up}",
                            lower=state + hb * (prof.kept + 2 * image + warp),
                            typical=state + 4 * params + hb * (3 * prof.forward + 2 * image)
                            + 3 * hb * warp, warp=hb * warp, upsample=c.upsample))
    e = per(c.eval_batch_size)
    out.append(StepNeed("evaluation step", f"--eval_batch_size={c.eval_batch_size} ({e} per "
                        f"device), --model={c.model}, {pics}", lower=params + e * image,
                        typical=2 * params + e * (prof.forward + image), warp=0))
    return out


def _gib(n: float) -> str:
    return f"{n / GIB:.3g} GiB"


def too_large(need: StepNeed, needed: float, budget: float, where: str, how: str) -> str:
    """The one-line error of a step that needs ``needed`` bytes of ``budget``."""
    if need.warp > needed / 2:
        lower = "--upsample" + (" or the batch size" if need.step != "evaluation step" else "")
    else:
        lower = need.flags.split("=", 1)[0] + " or --model"
    warp = (f", of which {_gib(need.warp)} are the {need.upsample}x-upsampled images of the "
            "warp" if need.warp else "")
    return (f"{need.flags}: the {need.step} needs {how}{_gib(needed)} per device{warp}, more "
            f"than the {_gib(budget)} of {where}; lower {lower}, spread the batch over more "
            "devices, or set --device_memory_gb if the device has more")


def _compiled_steps(config: cfg_lib.Config, data: Data, mesh, pipes: Pipes,
                    step_cfg: train.StepConfig) -> dict[str, Callable[[], Any]]:
    """{step: () -> compiled program} of the steps exactly as the trainer calls them (the
    same functions, shapes and shardings, so the run reuses the compiled programs)."""
    cfg, c = step_cfg, config
    state = train.create_train_state(jax.random.key(0), cfg, train.autodo_table_init(
        np.asarray(data.train_labels), cfg.num_classes, aug=cfg.learn_aug,
        shared_aug=cfg.shared_aug, weight=cfg.learn_weight, soft=cfg.learn_soft),
        tuple(data.source.image_shape), mesh=mesh)
    spec = lambda tree: jax.tree.map(   # noqa: E731
        lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=a.sharding), tree)
    k = c.steps_per_dispatch or default_steps_per_dispatch()

    def first(produce, steps):   # the placed arguments of a pass's first dispatch
        n = min(k, steps)
        gen = dispatches(produce, 0, n, n, mesh, 1)
        try:
            return spec(next(gen)[2])
        finally:
            gen.close()

    steps = train.make_steps(cfg, mesh, k)

    def inner():
        if pipes.reweight_val is None:
            produce = lambda j: pipes.train.batch(0, j)   # noqa: E731
        else:
            produce = lambda j: (pipes.train.batch(0, j), pipes.reweight_val.batch(   # noqa: E731
                *loader_position(pipes.reweight_val, j)))
        *batches, valid = first(produce, pipes.steps_per_epoch)
        return steps.train.lower(spec(state), *batches, valid=valid).compile()

    def hyper():
        *batches, valid = first(
            lambda j: (pipes.hyper_train.batch(*loader_position(pipes.hyper_train, j)),
                       pipes.hyper_val.batch(*loader_position(pipes.hyper_val, j))),
            pipes.hyper_steps_per_epoch)
        return steps.hyper.lower(spec(state), *batches, valid=valid).compile()

    def evaluate():
        split, index, labels = pipeline.eval_set(data.source, data.split, "test", c.eval_limit)
        batch = next(pipeline.eval_batches(split, index, labels, c.eval_batch_size,
                                           transform=pipes.eval_transform,
                                           shards=parallel.host_shards(mesh, c.eval_batch_size)))
        return steps.eval.lower(spec(state), spec(parallel.global_batch(batch, mesh))).compile()

    return {"inner step": inner, "hyper step": hyper, "evaluation step": evaluate}


def compiled_bytes(compiled: Any) -> float:
    """Device bytes of a compiled program (arguments, outputs and temporaries, donated
    buffers counted once), from XLA's memory analysis."""
    m = compiled.memory_analysis()
    return float(m.argument_size_in_bytes + m.output_size_in_bytes + m.temp_size_in_bytes
                 - m.alias_size_in_bytes)


def memory_errors(config: cfg_lib.Config, data: Data, mesh, pipes: Pipes,
                  step_cfg: train.StepConfig) -> list[str]:
    """[one line] naming the step that does not fit in device memory (the one that needs
    the most), or [] (all fit, or the device memory is unknown)."""
    budget, where = device_memory(config)
    if budget is None:
        return []
    needs = step_needs(config, step_cfg, tuple(data.source.image_shape),
                       len(data.train_index), mesh.size, pipes.hyper_batch_size)
    over = [n for n in needs if n.lower > budget]
    if over:   # one line: the step that needs the most (the others follow its fix)
        worst = max(over, key=lambda n: n.lower)
        return [too_large(worst, worst.lower, budget, where, "at least ")]
    compile_step = None
    for n in (n for n in needs if n.typical > budget):
        compile_step = compile_step or _compiled_steps(config, data, mesh, pipes, step_cfg)
        exact = compiled_bytes(compile_step[n.step]())
        if exact > budget:
            return [too_large(n, exact, budget, where, "")]
    return []


def check(config: cfg_lib.Config, data: Data, mesh, pipes: Pipes,
          step_cfg: train.StepConfig) -> None:
    """Raises ``ConfigError`` (one line) if a step does not fit in device memory."""
    errors = memory_errors(config, data, mesh, pipes, step_cfg)
    if errors:
        raise ConfigError(errors)

