"""Helpers of the config files: a full ``ConfigDict`` from ``Config`` plus changes.

A config file states only what its setting changes; ``make(**changes)`` fills in every
other field from ``experiments.config.Config``'s defaults (one place for defaults), so
that every field can be overridden with ``--config.<field>=value`` and the file is
checked by ``Config``'s validation (``config_checks.static_errors``) in the tests.
"""
from __future__ import annotations

import dataclasses
import os
from typing import Any, Sequence

import ml_collections

from experiments import config as cfg_lib

#: The config file that ``experiments.train`` loads when ``--config`` is not given
#: (it equals ``Config()``, the main job).
DEFAULT_FILE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "mnist5k.py")


def _typed(field: dataclasses.Field, value: Any) -> Any:
    """``value`` as the field's type (an int given for a float field becomes a float), so
    that command-line overrides parse with the field's type."""
    if field.type in (float, "float") and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    return value


def make(**changes: Any) -> ml_collections.ConfigDict:
    """Every ``Config`` field, defaults updated with ``changes``.

    Raises:
      TypeError: a key of ``changes`` is not a ``Config`` field.
    """
    config = cfg_lib.from_dict({**cfg_lib.Config().to_dict(), **changes})
    fields = {f.name: f for f in cfg_lib.field_specs()}
    return ml_collections.ConfigDict(
        {name: _typed(fields[name], value) for name, value in config.to_dict().items()})


def paper_column(arg: str | None, allowed: Sequence[str], **changes: Any
                 ) -> ml_collections.ConfigDict:
    """``make`` of a paper setting for the table column named by ``arg``: AutoDO λ^{A,W,S}
    (``autodo_aws``) with the column's imbalance and noise ratios.

    Args:
      arg: the column "IR-NR" (e.g. "100-0.1"); None or "" = the last of ``allowed`` (the
        most distorted column of the paper's table).
      allowed: the columns of the setting's table.
      **changes: the setting's other fields.

    Raises:
      ValueError: ``arg`` is not one of ``allowed``.
    """
    arg = arg or allowed[-1]
    if arg not in allowed:
        raise ValueError(f"config argument {arg!r}: allowed columns are {', '.join(allowed)} "
                         "(IR-NR)")
    ir, nr = arg.split("-")
    return make(method="autodo_aws", imbalance_ratio=float(ir), noise_ratio=float(nr),
                **changes)
