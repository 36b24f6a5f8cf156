"""The training methods of ``experiments.train``: one typed `Method` record each.

`METHODS` maps each ``--method`` name to its record: what the inner steps train on, the
host augmentation, the per-example table (its fields, shared or per example, whether hyper
steps learn it), the look-ahead reweighting, and the names a table or a plot shows.
`get(name)` looks one up. Everything the experiments derive from a method reads these
records; a new method is one entry here plus its step code in the library.
"""
from __future__ import annotations

import dataclasses
from typing import Literal

from autodo_jax import train
from autodo_jax.data import transforms

#: Fields of a per-example table, as a method names them: "aug" (λ_A: the warp's
#: probabilities and magnitudes, table keys "aug_p" / "aug_m"), "weight" (λ_W, loss
#: weights) and "soft" (λ_S, soft-label logits).
TableField = Literal["aug", "weight", "soft"]
TABLE_FIELDS: tuple[TableField, ...] = ("aug", "weight", "soft")
#: What the inner steps train on: the split's train rows, its clean validation examples,
#: or both (validation rows appended after the train rows).
TrainOn = Literal["train", "val", "train+val"]
TRAIN_ONS: tuple[TrainOn, ...] = ("train", "val", "train+val")
#: The families of methods (a plot draws each family with its own line style).
Family = Literal["autodo", "clean", "lookahead", "plain"]

_NO_FIELDS: frozenset[TableField] = frozenset()


@dataclasses.dataclass(frozen=True)
class Method:
    """One training method.

    Attributes:
        name: the ``--method`` value.
        label: its name in result tables (``experiments.results``).
        words: the method in words, for a plot's legend (``experiments.report_plot``).
        host_policy: the host augmentation of its train batches, a name of
            ``transforms.POLICY_NAMES`` (``--host_policy`` replaces it for any method;
            ``--colour_policy=False`` turns "color_subset" into "crop_flip").
        table: the fields of its per-example table (empty: no table).
        hyper_steps: hyper steps learn the table; False keeps it at its initial values
            (``autodo_fixed``: AutoDO's initial λ, the ablation of what learning λ adds).
        shared_aug: λ_A is one row shared by every example (λ^A_SHA), not one per example.
        train_on: what the inner steps train on, one of ``TRAIN_ONS``
            (``--train_on_val`` makes it "train+val" for methods with a table).
        reweight: the inner step's look-ahead reweighting on a clean validation batch, one
            of ``train.REWEIGHTS`` ("none": no look-ahead).

    Raises:
        ValueError: on construction, for a field outside its allowed values or a
            combination no step implements (one line naming the method and the field).
    """

    name: str
    label: str
    words: str
    host_policy: str
    table: frozenset[TableField] = _NO_FIELDS
    hyper_steps: bool = False
    shared_aug: bool = False
    train_on: TrainOn = "train"
    reweight: str = "none"

    def __post_init__(self) -> None:
        def bad(field: str, why: str) -> ValueError:
            return ValueError(f"Method {self.name!r}: {field}={getattr(self, field)!r}: {why}")

        if self.host_policy not in transforms.POLICY_NAMES:
            raise bad("host_policy", f"allowed: {', '.join(transforms.POLICY_NAMES)}")
        if not isinstance(self.table, frozenset) or not self.table <= set(TABLE_FIELDS):
            raise bad("table", f"allowed: a frozenset of {', '.join(TABLE_FIELDS)}")
        if self.train_on not in TRAIN_ONS:
            raise bad("train_on", f"allowed: {', '.join(TRAIN_ONS)}")
        if self.reweight not in train.REWEIGHTS:
            raise bad("reweight", f"allowed: {', '.join(train.REWEIGHTS)}")
        if self.hyper_steps and not self.table:
            raise bad("hyper_steps", "needs a table to learn")
        if self.shared_aug and "aug" not in self.table:
            raise bad("shared_aug", "needs the table field 'aug'")
        if self.reweight != "none" and self.table:
            raise bad("reweight", "the look-ahead steps take no table")
        if self.table and self.train_on != "train":
            raise bad("train_on", "a table has one row per train example: 'train' only "
                                  "(--train_on_val appends the validation rows)")

    @property
    def learned(self) -> frozenset[TableField]:
        """The table fields its hyper steps learn (empty without hyper steps)."""
        return self.table if self.hyper_steps else _NO_FIELDS

    @property
    def uses_val_batches(self) -> bool:
        """Its steps read clean validation batches (hyper or look-ahead steps)."""
        return self.hyper_steps or self.reweight != "none"

    @property
    def family(self) -> Family:
        """"autodo" (a per-example table), "clean" (trains on the clean split),
        "lookahead" (reweights by a look-ahead) or "plain"."""
        if self.table:
            return "autodo"
        if self.train_on != "train":
            return "clean"
        return "lookahead" if self.reweight != "none" else "plain"

    def trains_on(self, train_on_val: bool) -> TrainOn:
        """What a run's inner steps train on: its own ``train_on``, or "train+val" with
        ``--train_on_val``."""
        return "train+val" if train_on_val else self.train_on

    def run_host_policy(self, host_policy: str, colour_policy: bool) -> str:
        """The host transform name (``transforms.POLICY_NAMES``) of a run's train batches:
        ``host_policy`` (the flag) unless "auto", else its own, with the colour subset
        replaced by crop/flip when ``colour_policy`` is False."""
        if host_policy != "auto":
            return host_policy
        if self.host_policy == "color_subset" and not colour_policy:
            return "crop_flip"
        return self.host_policy

    def run_table(self, init_warp: bool) -> frozenset[TableField]:
        """The fields of a run's per-example table: its own, plus a shared λ_A row with
        ``--init_warp`` (AutoDO's initial augmentation, which no hyper step learns)."""
        return (self.table | {"aug"}) if init_warp else self.table

    def run_shared_aug(self, init_warp: bool) -> bool:
        """Whether a run's λ_A is one shared row: its own, or the ``--init_warp`` row."""
        return self.shared_aug or (init_warp and "aug" not in self.table)


def _registry(*methods: Method) -> dict[str, Method]:
    return {m.name: m for m in methods}


_AWS: frozenset[TableField] = frozenset(TABLE_FIELDS)

#: Every method, in the order of a result table's rows.
METHODS: dict[str, Method] = _registry(
    Method("none", "Baseline", "Baseline: plain cross-entropy", host_policy="none"),
    Method("crop_flip", "Crop/flip", "Crop/flip", host_policy="crop_flip"),
    Method("randaugment", "RAA", "RandAugment", host_policy="randaugment"),
    Method("fast_aa", "FAA", "Fast AutoAugment", host_policy="fast_aa"),
    Method("dada", "DADA", "DADA", host_policy="dada"),
    Method("autodo_sha", "λ^A_SHA", r"$\lambda^A_{SHA}$: one learned augmentation for all",
           host_policy="color_subset", table=frozenset({"aug"}), hyper_steps=True,
           shared_aug=True),
    Method("autodo_a", "λ^A", r"$\lambda^A$: learned augmentation",
           host_policy="color_subset", table=frozenset({"aug"}), hyper_steps=True),
    Method("autodo_aw", "λ^{A,W}", r"$\lambda^{A,W}$: learned augmentation + loss weights",
           host_policy="color_subset", table=frozenset({"aug", "weight"}), hyper_steps=True),
    Method("autodo_aws", "λ^{A,W,S}",
           r"$\lambda^{A,W,S}$: + soft labels, the paper's protocol (main job)",
           host_policy="color_subset", table=_AWS, hyper_steps=True),
    Method("autodo_fixed", "λ^{A,W,S} fixed at init",
           r"$\lambda^{A,W,S}$ frozen at their initial values",
           host_policy="color_subset", table=_AWS, hyper_steps=False),
    Method("val_only", "Val only", "Val only: the clean split alone",
           host_policy="crop_flip", train_on="val"),
    Method("train_plus_val", "Train+val", "Train+val: the clean split added to train",
           host_policy="crop_flip", train_on="train+val"),
    # competitors (issue 13): the same host augmentation as AutoDO (colour subset) for the
    # two that use the clean split; TrivialAugment Wide uses nothing clean.
    Method("trivialaugment", "TA (wide)", "TrivialAugment Wide, no clean data",
           host_policy="trivialaugment"),
    Method("l2rw", "L2RW", "L2RW: Learning to Reweight", host_policy="color_subset",
           reweight="l2rw"),
    Method("mwn", "MW-Net", "MW-Net: Meta-Weight-Net", host_policy="color_subset",
           reweight="mwn"),
)


def get(name: str) -> Method:
    """The method called ``name``.

    Raises:
        ValueError: an unknown name (one line listing the allowed names).
    """
    try:
        return METHODS[name]
    except (KeyError, TypeError):
        raise ValueError(f"unknown method {name!r}; allowed: {', '.join(METHODS)}") from None
