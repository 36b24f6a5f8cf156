"""``StepConfig``: the static (hashable) description of the train steps, and the
optimizers, schedules and solvers built from it."""
from __future__ import annotations

import dataclasses
from typing import Any, Optional

import jax
import jax.numpy as jnp
import optax

from autodo_jax import implicit, tables
from autodo_jax import reweight as reweight_lib
from autodo_jax.models import MODEL_NAMES, Classifier, get_model

SOLVERS = ("neumann", "identity", "cg", "nystrom")
CURVATURES = implicit.CURVATURES
#: float16 is not offered: without loss scaling its 5-bit exponent flushes small gradients
#: to zero and overflows large ones; bfloat16 has float32's range and needs no scaling.
COMPUTE_DTYPES = ("float32", "bfloat16")
#: Row optimizers of the tables: "rmsprop_local" (row-local time, scale-free: the default)
#: and "rmsprop_global" (the original's dense RMSprop clock, reproduced exactly).
TABLE_OPTIMIZERS = ("rmsprop_local", "rmsprop_global")
#: Per-batch reweighting of the inner step by a look-ahead on a clean batch
#: (``autodo_jax.reweight``): none, Learning to Reweight, Meta-Weight-Net.
REWEIGHTS = ("none", "l2rw", "mwn")
#: Parameters that take the look-ahead's virtual step: every model parameter (the papers
#: of L2RW and MWN), or the linear head only (encoder features computed once per batch).
REWEIGHT_SCOPES = ("all", "head")
#: Table fields of each learning-rate group.
LR_FIELDS = {"aug": ("aug_p", "aug_m"), "weight": ("weight",), "soft": ("soft",)}
#: What the implicit differentiation treats as θ (the inner solution):
#:   "head": kernel and bias of the linear head;
#:   "kernel": the kernel alone, bias fixed (the original AutoDO's θ);
#:   "centred_kernel": the kernel acting on features centred by the train batch's mean
#:     feature, with the bias absorbing the mean (b' = b + Wᵀ f̄, fixed). The logits are
#:     the same; the hypergradient loses the component that is identical for every
#:     example (see docs/science.md).
IMPLICIT_THETAS = ("head", "kernel", "centred_kernel")
#: Normalisation of the soft-label rows by the row RMSprop: per coordinate, or per row
#: vector (the C logits of one example share one second moment; rmsprop_local only).
SOFT_NORMS = ("coordinate", "row")


@dataclasses.dataclass(frozen=True)
class StepConfig:
    """Static configuration of :func:`inner_step`, :func:`hyper_step` and :func:`eval_step`.

    Frozen and hashable (it is a static jit argument): changing a field recompiles.

    Attributes:
        model: a name of ``autodo_jax.models.MODEL_NAMES``.
        num_classes: number of classes C.
        compute_dtype: encoder compute dtype, "float32" | "bfloat16" (no float16: it
            would need loss scaling)
            (parameters, optimizer state, features and logits stay float32).
        learn_aug: train on images augmented with the table's λ_A rows ("aug_p", "aug_m").
        shared_aug: λ_A is one shared row (λ^A_SHA) instead of one row per example.
        learn_weight: weight each example's loss by ``losses.loss_weight(λ_W)`` (table
            "weight").
        learn_soft: train against the table's soft labels λ_S (table "soft") by KL
            instead of cross-entropy against the given labels.
        symmetric_kl: use ½[KL(q‖p) + KL(p‖q)] for the soft-label loss.
        upsample: super-sampling factor of the augmentation warp (the original: 4).
        lr: peak learning rate of the model's SGD.
        momentum: SGD momentum (Nesterov when ``nesterov``).
        nesterov: Nesterov momentum.
        weight_decay: L2 coefficient added to the gradient of every parameter (PyTorch
            SGD's ``weight_decay``).
        warmup_steps: linear warm-up from ``lr * warmup_factor`` to ``lr`` (inner steps).
        total_steps: inner steps of the whole run (warm-up included); the cosine decays
            to ``lr * final_lr_factor`` at ``total_steps``.
        warmup_factor: start of the warm-up as a fraction of ``lr``.
        final_lr_factor: end of the cosine as a fraction of ``lr``.
        hyper_lr: peak learning rate of the tables' row-sparse RMSprop.
        hyper_lr_aug, hyper_lr_weight, hyper_lr_soft: peak learning rates of the λ_A,
            λ_W and λ_S fields (None = ``hyper_lr``).
        hyper_warmup_steps, hyper_total_steps: the same schedule shape over hyper steps.
        table_optimizer: one of ``TABLE_OPTIMIZERS``.
        soft_norm: one of ``SOFT_NORMS`` ("row" needs table_optimizer "rmsprop_local").
        implicit_theta: one of ``IMPLICIT_THETAS``.
        rmsprop_decay, rmsprop_eps: RMSprop's second-moment decay (per visit of a row for
            "rmsprop_local", per hyper step for "rmsprop_global") and epsilon.
        solver: inverse-curvature solver, one of ``SOLVERS``.
        solver_iters: Neumann J / CG iterations (the maximum when ``solver_tol`` > 0).
        solver_tol: relative-residual tolerance of Neumann and CG; 0 runs ``solver_iters``
            (the paper's fixed J; CG stops at rounding level).
        neumann_alpha: Neumann step α.
        neumann_scale: "ift" (exact implicit-function scale) or "original" (the original
            code's, 1/α times larger).
        cg_damping: damping added to the curvature by CG.
        nystrom_rank, nystrom_rho: sketch size and damping of the Nyström solver.
        curvature: "hessian" (the original), "gauss_newton" or "empirical_fisher".
        hypergrad_mode: derivative mode passed to ``implicit.hypergrad`` ("joint", ...).
        reweight: one of ``REWEIGHTS``; "l2rw" / "mwn" train with
            :func:`~autodo_jax._src.train.reweight_steps.reweight_step` (no table).
        mwn_hidden: hidden units of the Meta-Weight-Net MLP.
        mwn_lr, mwn_weight_decay: its Adam learning rate (constant) and coupled decay.
        mwn_normalize: MWN weights V/ΣV instead of V/B.
        reweight_scope: one of ``REWEIGHT_SCOPES``: "all" (the papers) or "head" (the
            virtual step moves the linear head only; the encoder's train and clean features
            are computed once, so the look-ahead costs about one forward on top of a plain
            step instead of three to four).
    """

    model: str = "small_cnn"
    num_classes: int = 10
    compute_dtype: str = "float32"
    learn_aug: bool = False
    shared_aug: bool = False
    learn_weight: bool = False
    learn_soft: bool = False
    symmetric_kl: bool = False
    upsample: int = 1
    lr: float = 0.05
    momentum: float = 0.9
    nesterov: bool = True
    weight_decay: float = 1e-4
    warmup_steps: int = 0
    total_steps: int = 1
    warmup_factor: float = 0.1
    final_lr_factor: float = 1e-3
    hyper_lr: float = 0.05
    hyper_lr_aug: Optional[float] = None
    hyper_lr_weight: Optional[float] = None
    hyper_lr_soft: Optional[float] = None
    hyper_warmup_steps: int = 0
    hyper_total_steps: int = 1
    table_optimizer: str = "rmsprop_local"
    soft_norm: str = "coordinate"
    implicit_theta: str = "head"
    rmsprop_decay: float = 0.99
    rmsprop_eps: float = 1e-8
    solver: str = "neumann"
    solver_iters: int = 5
    solver_tol: float = 0.0
    neumann_alpha: float = 0.01
    neumann_scale: str = "ift"
    cg_damping: float = 0.0
    nystrom_rank: int = 10
    nystrom_rho: float = 1e-3
    curvature: str = "hessian"
    hypergrad_mode: str = "joint"
    reweight: str = "none"
    mwn_hidden: int = reweight_lib.MWN_HIDDEN
    mwn_lr: float = reweight_lib.MWN_LEARNING_RATE
    mwn_weight_decay: float = reweight_lib.MWN_WEIGHT_DECAY
    mwn_normalize: bool = False
    reweight_scope: str = "all"

    def __post_init__(self) -> None:
        def need(ok: bool, field: str, allowed: str) -> None:
            if not ok:
                raise ValueError(f"StepConfig.{field} must be {allowed}, got "
                                 f"{getattr(self, field)!r}")

        need(self.model in MODEL_NAMES, "model", f"one of {MODEL_NAMES}")
        need(isinstance(self.num_classes, int) and self.num_classes >= 2, "num_classes",
             "an int >= 2")
        need(self.compute_dtype in COMPUTE_DTYPES, "compute_dtype", f"one of {COMPUTE_DTYPES}")
        need(not self.shared_aug or self.learn_aug, "shared_aug", "False unless learn_aug")
        need(isinstance(self.upsample, int) and self.upsample >= 1, "upsample", "an int >= 1")
        need(self.total_steps >= 1, "total_steps", ">= 1")
        need(0 <= self.warmup_steps <= self.total_steps, "warmup_steps",
             "in [0, total_steps]")
        need(self.hyper_total_steps >= 1, "hyper_total_steps", ">= 1")
        need(0 <= self.hyper_warmup_steps <= self.hyper_total_steps, "hyper_warmup_steps",
             "in [0, hyper_total_steps]")
        need(self.lr > 0, "lr", "> 0")
        for group in LR_FIELDS:
            name = f"hyper_lr_{group}"
            value = getattr(self, name)
            need(value is None or value > 0, name, "None or > 0")
        need(self.hyper_lr > 0, "hyper_lr", "> 0")
        need(self.table_optimizer in TABLE_OPTIMIZERS, "table_optimizer",
             f"one of {TABLE_OPTIMIZERS}")
        need(0 <= self.rmsprop_decay < 1, "rmsprop_decay", "in [0, 1)")
        need(self.soft_norm in SOFT_NORMS, "soft_norm", f"one of {SOFT_NORMS}")
        need(self.soft_norm == "coordinate" or self.table_optimizer == "rmsprop_local",
             "soft_norm", "'coordinate' with table_optimizer='rmsprop_global'")
        need(self.implicit_theta in IMPLICIT_THETAS, "implicit_theta",
             f"one of {IMPLICIT_THETAS}")
        need(self.solver in SOLVERS, "solver", f"one of {SOLVERS}")
        need(self.curvature in CURVATURES, "curvature", f"one of {CURVATURES}")
        need(self.neumann_scale in implicit.NEUMANN_SCALES, "neumann_scale",
             f"one of {implicit.NEUMANN_SCALES}")
        need(self.hypergrad_mode in implicit.MODES, "hypergrad_mode",
             f"one of {implicit.MODES}")
        need(self.solver_iters >= 0, "solver_iters", ">= 0")
        need(self.solver_tol >= 0, "solver_tol", ">= 0")
        need(self.reweight in REWEIGHTS, "reweight", f"one of {REWEIGHTS}")
        need(self.reweight == "none" or not self.learns_anything, "reweight",
             '"none" when a table is learned (learn_aug/learn_weight/learn_soft)')
        need(self.reweight_scope in REWEIGHT_SCOPES, "reweight_scope",
             f"one of {REWEIGHT_SCOPES}")
        need(isinstance(self.mwn_hidden, int) and self.mwn_hidden >= 1, "mwn_hidden",
             "an int >= 1")
        need(self.mwn_lr > 0 and self.mwn_weight_decay >= 0, "mwn_lr",
             "> 0 (and mwn_weight_decay >= 0)")

    @property
    def learns_anything(self) -> bool:
        """True when the method has per-example hyperparameters (a non-empty table)."""
        return self.learn_aug or self.learn_weight or self.learn_soft

    @property
    def loss_mode(self) -> str:
        """The per-example train loss, one of ``losses.LOSS_MODES``: "ce" against the given
        labels, or "kl" / "symmetric_kl" against the learned soft labels."""
        if not self.learn_soft:
            return "ce"
        return "symmetric_kl" if self.symmetric_kl else "kl"

    def table_keys(self) -> frozenset[str]:
        """Table fields this configuration reads and learns."""
        keys = set()
        if self.learn_aug:
            keys |= {"aug_p", "aug_m"}
        if self.learn_weight:
            keys.add("weight")
        if self.learn_soft:
            keys.add("soft")
        return frozenset(keys)


def model_from_config(cfg: StepConfig) -> Classifier:
    """The Flax classifier described by ``cfg`` (model name, classes, compute dtype)."""
    return get_model(cfg.model, cfg.num_classes, dtype=jnp.dtype(cfg.compute_dtype))


def _warmup_cosine(peak: float, warmup: int, total: int, cfg: StepConfig) -> optax.Schedule:
    return optax.warmup_cosine_decay_schedule(
        init_value=peak * cfg.warmup_factor, peak_value=peak, warmup_steps=warmup,
        decay_steps=max(total, warmup + 1), end_value=peak * cfg.final_lr_factor)


def lr_schedule(cfg: StepConfig) -> optax.Schedule:
    """Inner learning rate: linear warm-up from lr·warmup_factor, cosine to lr·final."""
    return _warmup_cosine(cfg.lr, cfg.warmup_steps, cfg.total_steps, cfg)


def hyper_lr_schedule(cfg: StepConfig, group: Optional[str] = None) -> optax.Schedule:
    """Table learning rate, the same shape over hyper steps.

    Args:
        cfg: the step configuration.
        group: None for ``hyper_lr``, or a key of ``LR_FIELDS`` ("aug", "weight", "soft")
            for that group's rate (its ``hyper_lr_<group>``, else ``hyper_lr``).
    """
    peak = cfg.hyper_lr if group is None else getattr(cfg, f"hyper_lr_{group}")
    peak = cfg.hyper_lr if peak is None else peak
    return _warmup_cosine(peak, cfg.hyper_warmup_steps, cfg.hyper_total_steps, cfg)


def inner_optimizer(cfg: StepConfig) -> optax.GradientTransformation:
    """SGD (Nesterov) with coupled weight decay on every parameter, as PyTorch's SGD."""
    return optax.chain(
        optax.add_decayed_weights(cfg.weight_decay),
        optax.sgd(lr_schedule(cfg), momentum=cfg.momentum, nesterov=cfg.nesterov))


def table_optimizer(cfg: StepConfig) -> tables.RowOptimizer:
    """Row-sparse RMSprop on the per-example tables, one learning-rate schedule per field
    (``hyper_lr_aug`` for "aug_p"/"aug_m", ``hyper_lr_weight``, ``hyper_lr_soft``)."""
    lrs = {field: hyper_lr_schedule(cfg, group)
           for group, fields in LR_FIELDS.items() for field in fields}
    if cfg.table_optimizer == "rmsprop_global":
        return tables.row_rmsprop(lrs, decay=cfg.rmsprop_decay, eps=cfg.rmsprop_eps)
    vector = ("soft",) if cfg.soft_norm == "row" else ()
    return tables.row_rmsprop_local(lrs, decay=cfg.rmsprop_decay, eps=cfg.rmsprop_eps,
                                    vector_fields=vector)


def mwn_optimizer(cfg: StepConfig) -> optax.GradientTransformation:
    """The Meta-Weight-Net MLP's optimizer (``reweight.mwn_optimizer``) of ``cfg``."""
    return reweight_lib.mwn_optimizer(cfg.mwn_lr, cfg.mwn_weight_decay)


def make_solver(cfg: StepConfig, key: jax.Array) -> Any:
    """The inverse-curvature solver of ``cfg`` (``key`` only used by Nyström)."""
    if cfg.solver == "neumann":
        return implicit.neumann(cfg.solver_iters, cfg.neumann_alpha, cfg.neumann_scale,
                                tol=cfg.solver_tol)
    if cfg.solver == "identity":
        return implicit.identity()
    if cfg.solver == "cg":
        return implicit.cg(cfg.solver_iters, cfg.cg_damping, tol=cfg.solver_tol)
    return implicit.nystrom(cfg.nystrom_rank, cfg.nystrom_rho, key)
