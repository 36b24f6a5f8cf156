"""Differentiable affine augmentation g_A(λ_A) of AutoDO.

Each image gets K = 7 affine ops (``OP_NAMES``). For op k an example row holds a probability
logit ``p_k`` and a magnitude logit ``m_k``; a sample is

    on_k  = hard straight-through Gumbel-softmax (τ = 1) over [log σ(p_k), log(1 − σ(p_k))]
    value_k = mid_k + on_k · σ(m_k) · ε_k · range_k,    ε_k ~ N(0, 1)

with (mid, range) = rotation (0, 30°), translate-x/y (0, 0.45 of the width/height),
shear-x/y (0, 0.30), scale-x/y (1, 0.50). The values define an affine map
shear ∘ translate ∘ (rotate + scale), every part pivoting on the image centre, and the image
is resampled bilinearly with border replication (optionally super-sampled, see ``warp``).

Everything is a pure function of explicit keys and arrays, vectorised over the batch (NHWC),
jit-able and differentiable (forward and reverse mode, any order) with respect to the
logits, the matrices and the images.

Conventions:
  * Pixel coordinates: ``x`` = column, ``y`` = row, pixel centres at integers 0..W-1 / 0..H-1;
    the image centre is ((W-1)/2, (H-1)/2), so a 90° rotation of a square image is an exact
    pixel permutation.
  * Positive rotation is counter-clockwise on screen (y axis pointing down), as in kornia.
  * ``affine_matrices`` returns *pull* matrices: homogeneous maps from an output pixel to the
    input position it samples (the inverse of the forward map above).

The resampling (``warp``: bilinear, border replication, super-sampling, its right-sided
derivative at integer coordinates) lives in ``autodo_jax/_src/warp.py``; this module
re-exports it.

Bad input raises ValueError/TypeError at trace time (shapes, dtypes, names). Non-finite
parameter values are only detectable on concrete arrays: ``augment`` checks them when called
outside ``jit``/``grad`` tracing and cannot inside (NaN then propagates to the output).
"""
from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import chex
import jax
import jax.numpy as jnp
import numpy as np

from autodo_jax._src.warp import check_upsample as _check_upsample
from autodo_jax._src.warp import float_dtype as _float_dtype
from autodo_jax._src.warp import warp

__all__ = [
    "OP_NAMES", "NUM_OPS", "OP_MIDS", "OP_RANGES", "P_INIT", "M_INIT", "P_LOGIT_INIT",
    "M_LOGIT_INIT", "init_params", "sample_noise", "op_values", "sample_ops",
    "affine_matrices", "warp", "augment",
]

OP_NAMES = ("rotate", "translate_x", "translate_y", "shear_x", "shear_y", "scale_x", "scale_y")
NUM_OPS = len(OP_NAMES)
OP_MIDS = (0.0, 0.0, 0.0, 0.0, 0.0, 1.0, 1.0)
OP_RANGES = (30.0, 0.45, 0.45, 0.30, 0.30, 0.50, 0.50)  # degrees, fraction of size, -, -
P_INIT = 1.0 / (NUM_OPS - 2)  # σ(p) at init: 0.2
M_INIT = 0.5  # σ(m) at init: M / 10 with M = 5
P_LOGIT_INIT = math.log(P_INIT / (1.0 - P_INIT))
M_LOGIT_INIT = math.log(M_INIT / (1.0 - M_INIT))

_DET_FLOOR = 1e-6  # |det| floor of the forward affine map (a scale of 0 is singular)


# ----------------------------------------------------------------------------- validation


def _is_concrete(x) -> bool:
    return not isinstance(x, jax.core.Tracer)


def _check_finite(name: str, x) -> None:
    """Raise if a *concrete* array holds NaN/inf; tracers are skipped (see module doc)."""
    if _is_concrete(x) and not np.all(np.isfinite(np.asarray(x, dtype=np.float64))):
        raise ValueError(f"{name} contains non-finite values (NaN or inf).")


def _check_logits(name: str, x) -> jax.Array:
    x = jnp.asarray(x)
    if x.ndim != 2 or x.shape[1] != NUM_OPS:
        raise ValueError(f"{name} must have shape (B, {NUM_OPS}) or (1, {NUM_OPS}); got {x.shape}.")
    if not jnp.issubdtype(x.dtype, jnp.floating):
        raise TypeError(f"{name} must be a floating array; got dtype {x.dtype}.")
    return x


def _op_mask(ops: Sequence[str] | None) -> np.ndarray:
    """(K,) float mask of the enabled ops; None enables all."""
    if ops is None:
        return np.ones(NUM_OPS, np.float32)
    if isinstance(ops, str) or not isinstance(ops, Sequence):
        raise TypeError(f"ops must be a sequence of op names from {OP_NAMES}; got {ops!r}.")
    unknown = [o for o in ops if o not in OP_NAMES]
    if unknown:
        raise ValueError(f"Unknown op names {unknown}; allowed: {OP_NAMES}.")
    return np.array([name in ops for name in OP_NAMES], np.float32)


# ----------------------------------------------------------------------------- sampling


def init_params(num_rows: int = 1, *, dtype=jnp.float32) -> dict[str, jax.Array]:
    """Initial augmentation hyperparameters of AUTODO.md (σ(p) = 0.2, σ(m) = 0.5).

    Returns:
      ``{"aug_p": (num_rows, K), "aug_m": (num_rows, K)}`` logits.
    """
    if num_rows < 1:
        raise ValueError(f"num_rows must be >= 1; got {num_rows}.")
    return {"aug_p": jnp.full((num_rows, NUM_OPS), P_LOGIT_INIT, dtype),
            "aug_m": jnp.full((num_rows, NUM_OPS), M_LOGIT_INIT, dtype)}


def sample_noise(key: jax.Array, batch_size: int, dtype=jnp.float32) -> tuple[jax.Array, jax.Array]:
    """Draws the noise of one augmentation sample (one uniform draw, transformed).

    Returns:
      ``(gumbel (B, K, 2), eps (B, K))``: standard Gumbel noise for the [on, off] logits and
      standard normal magnitudes.
    """
    tiny = jnp.finfo(dtype).tiny
    u = jax.random.uniform(key, (batch_size, NUM_OPS, 3), dtype, minval=tiny, maxval=1.0)
    return -jnp.log(-jnp.log(u[..., :2])), jax.scipy.special.ndtri(u[..., 2])


def op_values(p_logits: jax.Array, m_logits: jax.Array, gumbel: jax.Array, eps: jax.Array,
              *, ops: Sequence[str] | None = None) -> jax.Array:
    """Op values from logits and fixed noise (deterministic part of ``sample_ops``).

    The on/off sample is ``on = hard + s − stop_gradient(s)`` with
    ``s = softmax([log σ(p) + g0, log σ(−p) + g1])[0] = σ(p + g0 − g1)`` and
    ``hard = 1[s >= 1/2]``; hence the straight-through gradient is ∂on/∂p = s (1 − s).
    The magnitude ``σ(m)·ε`` is reparameterised, ∂/∂m = σ'(m)·ε.

    Args:
      p_logits, m_logits: (B|1, K) logits, broadcast against the noise.
      gumbel: (B, K, 2) Gumbel noise; eps: (B, K) standard normal noise.
      ops: names of the enabled ops (default all); disabled ops stay at their mid value.

    Returns:
      (B, K) values: degrees, fractions of the size, shear factors, scale factors.
    """
    p_logits = _check_logits("p_logits", p_logits)
    m_logits = _check_logits("m_logits", m_logits)
    dtype = _float_dtype(p_logits, m_logits)
    gumbel, eps = jnp.asarray(gumbel, dtype), jnp.asarray(eps, dtype)
    if gumbel.ndim != 3 or gumbel.shape[1:] != (NUM_OPS, 2) or eps.shape != gumbel.shape[:2]:
        raise ValueError(f"gumbel must be (B, {NUM_OPS}, 2) and eps (B, {NUM_OPS}); "
                         f"got {gumbel.shape} and {eps.shape}.")
    for name, x in (("p_logits", p_logits), ("m_logits", m_logits)):
        if x.shape[0] not in (1, eps.shape[0]):
            raise ValueError(f"{name} has {x.shape[0]} rows; expected 1 or {eps.shape[0]}.")
    p, m = p_logits.astype(dtype), m_logits.astype(dtype)
    two = jnp.stack([jax.nn.log_sigmoid(p), jax.nn.log_sigmoid(-p)], -1) + gumbel
    soft = jax.nn.softmax(two, axis=-1)[..., 0]
    hard = (two[..., 0] >= two[..., 1]).astype(dtype)
    on = hard + soft - jax.lax.stop_gradient(soft)
    mask = jnp.asarray(_op_mask(ops), dtype)
    mids, ranges = jnp.asarray(OP_MIDS, dtype), jnp.asarray(OP_RANGES, dtype)
    return mids + mask * on * jax.nn.sigmoid(m) * eps * ranges


def sample_ops(key: jax.Array, p_logits: jax.Array, m_logits: jax.Array, *,
               num_samples: int | None = None, ops: Sequence[str] | None = None) -> jax.Array:
    """Samples op values (straight-through on/off, reparameterised magnitude).

    Args:
      key: PRNG key.
      p_logits, m_logits: (B|1, K) probability and magnitude logits.
      num_samples: number of rows B to draw (default: the larger leading dimension); one-row
        logits are shared by all B samples, each sample has its own noise.
      ops: names of the enabled ops (default all).

    Returns:
      (B, K) op values, see ``op_values``.
    """
    p_logits = _check_logits("p_logits", p_logits)
    m_logits = _check_logits("m_logits", m_logits)
    _op_mask(ops)  # validate names before drawing noise
    b = num_samples if num_samples is not None else max(p_logits.shape[0], m_logits.shape[0])
    gumbel, eps = sample_noise(key, b, _float_dtype(p_logits, m_logits))
    return op_values(p_logits, m_logits, gumbel, eps, ops=ops)


# ----------------------------------------------------------------------------- geometry


def _about_centre(a: jax.Array, cx: float, cy: float) -> jax.Array:
    """(…, 2, 2) linear part -> (…, 3, 3) affine map p ↦ c + A (p − c)."""
    c = jnp.asarray([cx, cy], a.dtype)
    t = c - jnp.einsum("...ij,j->...i", a, c)
    top = jnp.concatenate([a, t[..., None]], -1)
    bottom = jnp.broadcast_to(jnp.asarray([0.0, 0.0, 1.0], a.dtype), a.shape[:-2] + (1, 3))
    return jnp.concatenate([top, bottom], -2)


def _invert_affine(mat: jax.Array) -> jax.Array:
    """Closed-form inverse of (…, 3, 3) affine maps; |det| floored at ``_DET_FLOOR``."""
    a, b, tx = mat[..., 0, 0], mat[..., 0, 1], mat[..., 0, 2]
    c, d, ty = mat[..., 1, 0], mat[..., 1, 1], mat[..., 1, 2]
    det = a * d - b * c
    det = jnp.where(jnp.abs(det) < _DET_FLOOR, jnp.where(det < 0, -_DET_FLOOR, _DET_FLOOR), det)
    ia, ib, ic, id_ = d / det, -b / det, -c / det, a / det
    zero, one = jnp.zeros_like(a), jnp.ones_like(a)
    rows = [jnp.stack([ia, ib, -(ia * tx + ib * ty)], -1),
            jnp.stack([ic, id_, -(ic * tx + id_ * ty)], -1),
            jnp.stack([zero, zero, one], -1)]
    return jnp.stack(rows, -2)


def affine_matrices(values: jax.Array, height: int, width: int) -> jax.Array:
    """Pull matrices (output pixel -> input position) for op values.

    The forward map is ``S_c ∘ T ∘ R_c``: ``R_c`` rotates by ``values[:, 0]`` degrees
    (counter-clockwise on screen) after scaling by (``values[:, 5]``, ``values[:, 6]``), about
    the centre c; ``T`` translates by (``values[:, 1]``·W, ``values[:, 2]``·H) pixels; ``S_c``
    is the shear [[1, shx], [shy, 1]] about c. The result is its inverse (|det| floored at
    1e-6 so a zero scale stays finite).

    Args:
      values: (B, K) op values (``sample_ops``).
      height, width: image size in pixels.

    Returns:
      (B, 3, 3) homogeneous pull matrices acting on (x, y, 1), x = column, y = row.
    """
    values = jnp.asarray(values)
    if values.ndim != 2 or values.shape[1] != NUM_OPS:
        raise ValueError(f"values must have shape (B, {NUM_OPS}); got {values.shape}.")
    if int(height) < 1 or int(width) < 1:
        raise ValueError(f"height and width must be >= 1; got {height}, {width}.")
    values = values.astype(_float_dtype(values))
    angle, tx, ty, shx, shy, sx, sy = (values[:, k] for k in range(NUM_OPS))
    cx, cy = (width - 1) / 2.0, (height - 1) / 2.0
    cos, sin = jnp.cos(jnp.deg2rad(angle)), jnp.sin(jnp.deg2rad(angle))
    rot = jnp.stack([jnp.stack([cos * sx, sin * sy], -1), jnp.stack([-sin * sx, cos * sy], -1)], -2)
    one = jnp.ones_like(shx)
    shear = jnp.stack([jnp.stack([one, shx], -1), jnp.stack([shy, one], -1)], -2)
    forward = _about_centre(rot, cx, cy)
    shift = jnp.stack([tx * width, ty * height], -1)
    forward = forward.at[:, :2, 2].add(shift)
    forward = _about_centre(shear, cx, cy) @ forward
    return _invert_affine(forward)


def augment(key: jax.Array, images: jax.Array, params: Mapping[str, jax.Array], *,
            shared: bool = False, upsample: int = 1,
            ops: Sequence[str] | None = None) -> jax.Array:
    """Samples per-image affine ops from λ_A and warps the images (AutoDO's g_A).

    Args:
      key: PRNG key (one sample of on/off and magnitude noise per image and op).
      images: (B, H, W, C) floating images (float32 normalised or bfloat16).
      params: mapping with ``"aug_p"`` and ``"aug_m"`` logits, each (B, K) per example or
        (1, K) with ``shared=True`` (λ^A_SHA: one row broadcast to the batch, independent
        noise per image; its gradient is the batch sum). Other keys are ignored, so a row
        dict gathered from a table can be passed as is.
      shared: whether the parameters are a single shared row.
      upsample: super-sampling factor of ``warp`` (1 = none; the original used 4).
      ops: names of the enabled ops (default all ``OP_NAMES``).

    Returns:
      (B, H, W, C) augmented images, dtype of ``images``.
    """
    images = jnp.asarray(images)
    if images.ndim != 4:
        raise ValueError(f"images must be 4-D (B, H, W, C); got shape {images.shape}.")
    if not isinstance(params, Mapping) or "aug_p" not in params or "aug_m" not in params:
        raise ValueError("params must be a mapping with keys 'aug_p' and 'aug_m'.")
    if not isinstance(shared, bool):
        raise TypeError(f"shared must be a bool; got {shared!r}.")
    _check_upsample(upsample)
    _op_mask(ops)
    b = images.shape[0]
    rows = 1 if shared else b
    for name in ("aug_p", "aug_m"):
        x = _check_logits(f"params[{name!r}]", params[name])
        if x.shape[0] != rows:
            mode = "shared=True needs one row" if shared else f"per-example mode needs {b} rows"
            raise ValueError(f"params[{name!r}] has shape {x.shape}: {mode} (1 row means shared=True).")
        _check_finite(f"params[{name!r}]", x)
    values = sample_ops(key, params["aug_p"], params["aug_m"], num_samples=b, ops=ops)
    out = warp(images, affine_matrices(values, images.shape[1], images.shape[2]),
               upsample=upsample)
    chex.assert_equal_shape([out, images])  # the contract above, checked at trace time
    chex.assert_type(out, images.dtype)
    return out
