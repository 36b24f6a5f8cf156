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

Warp gradient at integer sampling coordinates: the bilinear sample is piecewise linear in
the coordinate, with kinks at integers. ``warp`` returns the *right-sided* derivative there,
``v[floor(x) + 1] − v[floor(x)]`` (the corners are floor and floor + 1, never floor and
ceil), so the gradient of an identity or integer-translation warp is non-zero, unlike
dm-pix's ``affine_transform``. Outside the image (border replication) it is zero.

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


def _float_dtype(*arrays) -> jnp.dtype:
    """Computation dtype: at least float32 (bfloat16/float16 inputs are upcast)."""
    return jnp.result_type(jnp.float32, *[a.dtype for a in arrays])


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


def _check_upsample(upsample) -> int:
    if isinstance(upsample, bool) or not isinstance(upsample, (int, np.integer)) or upsample < 1:
        raise ValueError(f"upsample must be an int >= 1; got {upsample!r}.")
    return int(upsample)


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


# ----------------------------------------------------------------------------- resampling


def _corners(images, x, y):
    """The 4 bilinear corners (each (B, h, w, C)) and weights ((B, h, w, 1)) of coords x, y.

    Coordinates are clipped to [-1, size] first (border replication makes everything beyond
    constant), so huge or infinite coordinates cannot overflow the integer cast.
    """
    _, height, width, _ = images.shape
    x = jnp.clip(x, -1.0, float(width))
    y = jnp.clip(y, -1.0, float(height))
    x0, y0 = jnp.floor(x), jnp.floor(y)
    wx, wy = (x - x0)[..., None], (y - y0)[..., None]
    x0, y0 = x0.astype(jnp.int32), y0.astype(jnp.int32)
    xa, xb = jnp.clip(x0, 0, width - 1), jnp.clip(x0 + 1, 0, width - 1)
    ya, yb = jnp.clip(y0, 0, height - 1), jnp.clip(y0 + 1, 0, height - 1)
    batch = jnp.arange(images.shape[0])[:, None, None]
    return (images[batch, ya, xa], images[batch, ya, xb], images[batch, yb, xa],
            images[batch, yb, xb], wx, wy)


@jax.custom_jvp
def _bilinear(images: jax.Array, x: jax.Array, y: jax.Array) -> jax.Array:
    """Bilinear sample of images (B, H, W, C) at x, y (B, h, w), border replication."""
    v00, v01, v10, v11, wx, wy = _corners(images, x, y)
    top, bottom = v00 + (v01 - v00) * wx, v10 + (v11 - v10) * wx
    return top + (bottom - top) * wy


def _bilinear_jvp(primals, tangents):
    # Hand-written rule: right-sided derivative at integer coordinates (corners floor and
    # floor + 1), zero beyond the border; cheaper than autodiff of the gathers. Symbolic
    # zero tangents (e.g. constant images) cost nothing.
    images, x, y = primals
    d_images, dx, dy = tangents
    v00, v01, v10, v11, wx, wy = _corners(images, x, y)
    top, bottom = v00 + (v01 - v00) * wx, v10 + (v11 - v10) * wx
    out = top + (bottom - top) * wy
    terms = []
    if not _is_zero(dx):
        terms.append(((v01 - v00) + ((v11 - v10) - (v01 - v00)) * wy) * dx[..., None])
    if not _is_zero(dy):
        terms.append((bottom - top) * dy[..., None])
    if not _is_zero(d_images):
        terms.append(_bilinear(d_images, x, y))
    tangent = sum(terms[1:], terms[0]) if terms else jnp.zeros_like(out)
    return out, tangent


def _is_zero(tangent) -> bool:
    return isinstance(tangent, jax.custom_derivatives.SymbolicZero)


_bilinear.defjvp(_bilinear_jvp, symbolic_zeros=True)


def _upsample_linear(images: jax.Array, factor: int) -> jax.Array:
    """Integer-factor bilinear upsampling, half-pixel centres, edge clamping (NHWC).

    Equals ``jax.image.resize(..., "linear")`` for upsampling but is a few shifted adds
    instead of dense resampling matrices.
    """
    def along(x, axis):
        n = x.shape[axis]
        padded = jnp.concatenate([jax.lax.slice_in_dim(x, 0, 1, axis=axis), x,
                                  jax.lax.slice_in_dim(x, n - 1, n, axis=axis)], axis)
        prev = jax.lax.slice_in_dim(padded, 0, n, axis=axis)
        nxt = jax.lax.slice_in_dim(padded, 2, n + 2, axis=axis)
        phases = []
        for r in range(factor):
            delta = (r + 0.5) / factor - 0.5
            other = prev if delta < 0 else nxt
            phases.append(x + abs(delta) * (other - x))
        stacked = jnp.stack(phases, axis + 1)
        return stacked.reshape(x.shape[:axis] + (n * factor,) + x.shape[axis + 1:])
    return along(along(images, 1), 2)


def warp(images: jax.Array, matrices: jax.Array, *, upsample: int = 1) -> jax.Array:
    """Warps images by pull matrices with bilinear sampling and border replication.

    ``out[b, y, x] = images[b](M_b @ (x, y, 1))`` sampled bilinearly; positions outside the
    image take the value of the nearest border pixel. Only the top two rows of each matrix
    are used (affine maps). Gradients w.r.t. matrix entries are right-sided derivatives at
    integer sampling coordinates (see module doc).

    With ``upsample = s > 1`` (anti-aliasing, as the original's 4x path but centred): the
    image is upsampled s-fold (bilinear, half-pixel centres, edge clamp), warped at the high
    resolution with the matrix expressed in high-resolution pixels, and reduced by s x s
    average pooling (an area resize). The identity warp then returns a slightly blurred
    image (the up-then-box-down kernel), not the input.

    Args:
      images: (B, H, W, C) floating images (float32, bfloat16, float64, ...).
      matrices: (B, 3, 3) or (1, 3, 3) pull matrices in pixel coordinates of (H, W).
      upsample: integer super-sampling factor (1 = plain warp).

    Returns:
      (B, H, W, C) warped images, dtype of ``images`` (computed in at least float32).
    """
    images, matrices = jnp.asarray(images), jnp.asarray(matrices)
    if images.ndim != 4:
        raise ValueError(f"images must be 4-D (B, H, W, C); got shape {images.shape}.")
    if not jnp.issubdtype(images.dtype, jnp.floating):
        raise TypeError(f"images must be floating (normalised); got dtype {images.dtype}.")
    b, height, width, _ = images.shape
    if matrices.ndim != 3 or matrices.shape[1:] != (3, 3) or matrices.shape[0] not in (1, b):
        raise ValueError(f"matrices must have shape ({b}, 3, 3) or (1, 3, 3); got {matrices.shape}.")
    factor = _check_upsample(upsample)
    dtype = _float_dtype(images, matrices)
    src, mats = images.astype(dtype), matrices.astype(dtype)
    if factor > 1:
        src = _upsample_linear(src, factor)
        s, off = float(factor), (factor - 1) / 2.0
        up = jnp.asarray([[s, 0.0, off], [0.0, s, off], [0.0, 0.0, 1.0]], dtype)
        down = jnp.asarray([[1 / s, 0.0, -off / s], [0.0, 1 / s, -off / s], [0.0, 0.0, 1.0]], dtype)
        mats = up @ mats @ down
    # Sub-pixel phases (r, q) are accumulated one at a time on the (B, H, W) output grid
    # (a scan, so compile time does not grow with factor²): this never materialises the
    # (B, sH, sW, C) warped image nor its pooling reshape, which measured 2-5x faster on
    # CPU than warp-then-pool. factor = 1 is the plain warp.
    m = mats[:, :2, :, None, None]
    rows = jnp.arange(height, dtype=dtype)[None, :, None] * factor
    cols = jnp.arange(width, dtype=dtype)[None, None, :] * factor

    def phase(offset):
        xs, ys = cols + offset[1], rows + offset[0]
        x = jnp.broadcast_to(m[:, 0, 0] * xs + m[:, 0, 1] * ys + m[:, 0, 2], (b, height, width))
        y = jnp.broadcast_to(m[:, 1, 0] * xs + m[:, 1, 1] * ys + m[:, 1, 2], (b, height, width))
        return _bilinear(src, x, y)

    if factor == 1:
        out = phase(jnp.zeros(2, dtype))
    else:
        offsets = jnp.asarray([(r, q) for r in range(factor) for q in range(factor)], dtype)
        first = phase(offsets[0])
        out, _ = jax.lax.scan(lambda acc, off: (acc + phase(off), None), first, offsets[1:])
        out = out / (factor * factor)
    return out.astype(images.dtype)


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
