"""Per-example loss weights from a one-step look-ahead on a clean split: L2RW and MWN.

Pure functions over arbitrary pytrees; nothing here knows about images (imports from the
package only the pytree helpers of ``implicit``). Code in ``autodo_jax/_src/reweight/``:
``lookahead.py`` (the shared look-ahead), ``l2rw.py``, ``mwn.py``.

Notation: θ = ``params``, ℓ_i(θ) the per-example train losses of a batch (B,), L_val(θ)
the clean validation loss, α the look-ahead step. The *virtual step* with per-example
weights w is

    θ'(w) = θ − α ∇_θ Σ_i w_i ℓ_i(θ),

and since θ' is affine in w, dθ'/dw_i = −α ∇ℓ_i(θ) exactly, so

    ∂L_val(θ'(w))/∂w_i = −α ⟨∇ℓ_i(θ), ∇L_val(θ'(w))⟩ = −α (J v)_i,

with J the (B, P) Jacobian of ℓ at θ and v = ∇L_val(θ'). :func:`lookahead` computes it
forward-over-reverse without materialising J: one linearisation of θ ↦ ℓ(θ) (one train
forward), v by one reverse pass through the validation loss at θ', and J v by one
forward-mode product of the stored linearisation; θ' itself needs Jᵀw, the transposed
product (a backward pass), skipped when w = 0. The same linearisation also gives the
gradient of the final weighted loss, Jᵀw, with no new forward (:func:`l2rw_value_and_grad`,
:func:`mwn_value_and_grad`).

- :func:`l2rw_weights` / :func:`l2rw_value_and_grad`: Learning to Reweight Examples
  (Ren, Zeng, Yang, Urtasun, ICML 2018).
- :func:`mwn_init`, :func:`mwn_apply`, :func:`mwn_example_weights`, :func:`mwn_meta_grad`,
  :func:`mwn_value_and_grad`, :func:`mwn_optimizer`: Meta-Weight-Net (Shu, Xie, Yi, Zhao, Zhou, Xu, Meng, NeurIPS 2019).

    >>> w, info = l2rw_weights(per_example_loss, val_loss, params, batch, val_batch)
"""
from __future__ import annotations

from autodo_jax._src.reweight.l2rw import (L2RWInfo, l2rw_value_and_grad, l2rw_weights,
                                           normalize_positive)
from autodo_jax._src.reweight.lookahead import Lookahead, lookahead
from autodo_jax._src.reweight.mwn import (MWN_HIDDEN, MWN_LEARNING_RATE, MWN_WEIGHT_DECAY,
                                          MWNInfo, mwn_apply, mwn_example_weights, mwn_init,
                                          mwn_meta_grad, mwn_optimizer, mwn_value_and_grad)

__all__ = [
    "Lookahead", "lookahead", "L2RWInfo", "l2rw_weights", "l2rw_value_and_grad",
    "normalize_positive", "MWN_HIDDEN", "mwn_init", "mwn_apply", "mwn_example_weights",
    "MWNInfo", "mwn_meta_grad", "mwn_value_and_grad", "mwn_optimizer", "MWN_LEARNING_RATE",
    "MWN_WEIGHT_DECAY",
]
