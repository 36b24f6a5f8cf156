"""Resampling of ``autodo_jax.augment``: :func:`warp` (pull matrices, bilinear sampling,
border replication, optional super-sampling), re-exported by ``autodo_jax.augment``.

Warp gradient at integer sampling coordinates: the bilinear sample is piecewise linear in
the coordinate, with kinks at integers. ``warp`` returns the *right-sided* derivative there,
``v[floor(x) + 1] − v[floor(x)]`` (the corners are floor and floor + 1, never floor and
ceil), so the gradient of an identity or integer-translation warp is non-zero, unlike
dm-pix's ``affine_transform``. Outside the image (border replication) it is zero.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np


def float_dtype(*arrays) -> jnp.dtype:
    """Computation dtype: at least float32 (bfloat16/float16 inputs are upcast)."""
    return jnp.result_type(jnp.float32, *[a.dtype for a in arrays])


def check_upsample(upsample) -> int:
    """``upsample`` as an int; ValueError unless it is an int >= 1."""
    if isinstance(upsample, bool) or not isinstance(upsample, (int, np.integer)) or upsample < 1:
        raise ValueError(f"upsample must be an int >= 1; got {upsample!r}.")
    return int(upsample)


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
    integer sampling coordinates (see the module doc).

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
    factor = check_upsample(upsample)
    dtype = float_dtype(images, matrices)
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
