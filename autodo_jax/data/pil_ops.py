"""PIL image operations re-done in vectorised numpy on uint8 (n, H, W, C) batches.

Each op takes per-image parameters (n,) and reproduces Pillow's result for the same
parameter (checked against Pillow in tests): geometric ops use PIL's AFFINE convention
(output pixel centre (x+0.5, y+0.5) mapped to input coordinates, nearest = floor, black
fill); enhance ops blend with a degenerate image as ``ImageEnhance`` does (float32,
truncation, clipping when extrapolating); AutoContrast and Equalize follow
``ImageOps``; Cutout draws a filled square as ``ImageDraw.rectangle`` (inclusive
corners) in grey (125, 123, 114). All randomness (signs, cutout centres) is drawn by the
caller; these functions are deterministic.
"""
from __future__ import annotations

import numpy as np

CUTOUT_FILL = (125, 123, 114)


def affine_nearest(images: np.ndarray, coeffs: np.ndarray) -> np.ndarray:
    """PIL ``Image.transform(size, AFFINE, (a,b,c,d,e,f), NEAREST)`` per image, black fill.

    Args:
        images: uint8 (n, H, W, C).
        coeffs: float (n, 6): output (x, y) reads input
            (a (x+.5) + b (y+.5) + c, d (x+.5) + e (y+.5) + f), floored.
    """
    n, h, w, ch = images.shape
    a, b, c, d, e, f = (coeffs[:, i, None, None].astype(np.float64) for i in range(6))
    xs = np.arange(w, dtype=np.float64)[None, None, :] + 0.5
    ys = np.arange(h, dtype=np.float64)[None, :, None] + 0.5
    xi = np.floor(a * xs + b * ys + c).astype(np.int32)   # (n, H, W), PIL's double math
    yi = np.floor(d * xs + e * ys + f).astype(np.int32)
    valid = (xi.view(np.uint32) < w) & (yi.view(np.uint32) < h)   # negatives wrap to large
    flat = (np.arange(n, dtype=np.int32)[:, None, None] * h + yi) * w + xi
    flat = np.where(valid, flat, 0).reshape(-1)
    src = images.reshape(n * h * w, ch)
    out = np.empty((n * h * w, ch), np.uint8)
    for k in range(ch):
        out[:, k] = np.take(src[:, k], flat)
    out = out.reshape(n, h, w, ch)
    out[~valid] = 0
    return out


def _affine(images: np.ndarray, a=1.0, b=0.0, c=0.0, d=0.0, e=1.0, f=0.0) -> np.ndarray:
    n = images.shape[0]
    coeffs = np.stack(np.broadcast_arrays(*(np.asarray(v, np.float64) for v in
                                            (a, b, c, d, e, f)), np.zeros(n))[:6], axis=1)
    return affine_nearest(images, coeffs)


def shear_x(images: np.ndarray, v: np.ndarray) -> np.ndarray:
    """PIL AFFINE (1, v, 0, 0, 1, 0): input x = x + v*y."""
    return _affine(images, b=v)


def shear_y(images: np.ndarray, v: np.ndarray) -> np.ndarray:
    """PIL AFFINE (1, 0, 0, v, 1, 0): input y = v*x + y."""
    return _affine(images, d=v)


def translate_x(images: np.ndarray, v: np.ndarray) -> np.ndarray:
    """PIL AFFINE (1, 0, v*W, 0, 1, 0): v > 0 moves the content left by v*W pixels."""
    return _affine(images, c=np.asarray(v) * images.shape[2])


def translate_y(images: np.ndarray, v: np.ndarray) -> np.ndarray:
    """PIL AFFINE (1, 0, 0, 0, 1, v*H): v > 0 moves the content up by v*H pixels."""
    return _affine(images, f=np.asarray(v) * images.shape[1])


def rotate(images: np.ndarray, degrees: np.ndarray) -> np.ndarray:
    """PIL ``Image.rotate(deg)``: counter-clockwise about (W/2, H/2), nearest, black fill."""
    _, h, w, _ = images.shape
    angle = -np.radians(np.asarray(degrees, np.float64))
    cos, sin = np.round(np.cos(angle), 15), np.round(np.sin(angle), 15)
    cx, cy = w / 2.0, h / 2.0
    return _affine(images, cos, sin, cos * -cx + sin * -cy + cx,
                   -sin, cos, -sin * -cx + cos * -cy + cy)


def _luma(images: np.ndarray) -> np.ndarray:
    """PIL ``convert("L")`` (ITU-R 601-2, fixed point, rounded): uint8 (n, H, W)."""
    if images.shape[-1] == 1:
        return images[..., 0]
    x = images.astype(np.int64)
    return ((x[..., 0] * 19595 + x[..., 1] * 38470 + x[..., 2] * 7471 + 0x8000) >> 16).astype(
        np.uint8)


def blend(degenerate: np.ndarray, images: np.ndarray, factor: np.ndarray) -> np.ndarray:
    """PIL ``Image.blend(degenerate, image, factor)`` with a per-image factor (n,)."""
    alpha = np.asarray(factor, np.float32).reshape(-1, 1, 1, 1)
    d = degenerate.astype(np.float32)
    out = d + alpha * (images.astype(np.float32) - d)
    return np.clip(out, 0, 255).astype(np.uint8)


def color(images: np.ndarray, factor: np.ndarray) -> np.ndarray:
    """``ImageEnhance.Color``: blend with the luma image."""
    return blend(np.broadcast_to(_luma(images)[..., None], images.shape), images, factor)


def contrast(images: np.ndarray, factor: np.ndarray) -> np.ndarray:
    """``ImageEnhance.Contrast``: blend with the (rounded) mean luma."""
    mean = np.floor(_luma(images).mean(axis=(1, 2)) + 0.5).astype(np.uint8)
    return blend(np.broadcast_to(mean[:, None, None, None], images.shape), images, factor)


def brightness(images: np.ndarray, factor: np.ndarray) -> np.ndarray:
    """``ImageEnhance.Brightness``: blend with black."""
    return blend(np.zeros((1, 1, 1, 1), np.uint8), images, factor)


def smooth(images: np.ndarray) -> np.ndarray:
    """``ImageFilter.SMOOTH`` (3x3 [[1,1,1],[1,5,1],[1,1,1]]/13, rounded; border kept)."""
    x = images.astype(np.float32)
    acc = 4.0 * x[:, 1:-1, 1:-1]
    for dy in range(3):
        for dx in range(3):
            acc = acc + x[:, dy:dy + x.shape[1] - 2, dx:dx + x.shape[2] - 2]
    out = images.copy()
    out[:, 1:-1, 1:-1] = np.clip(np.floor(acc / np.float32(13.0) + 0.5), 0, 255).astype(np.uint8)
    return out


def sharpness(images: np.ndarray, factor: np.ndarray) -> np.ndarray:
    """``ImageEnhance.Sharpness``: blend with the smoothed image."""
    return blend(smooth(images), images, factor)


def _apply_luts(images: np.ndarray, luts: np.ndarray) -> np.ndarray:
    """Per-image, per-channel lookup: luts (n, C, 256) -> uint8 (n, H, W, C)."""
    n, _, _, ch = images.shape
    base = (np.arange(n)[:, None, None, None] * ch + np.arange(ch)) * 256
    return luts.reshape(-1)[base + images].astype(np.uint8)


def _histograms(images: np.ndarray) -> np.ndarray:
    n, _, _, ch = images.shape
    keys = (np.arange(n)[:, None, None, None] * ch + np.arange(ch)) * 256 + images
    return np.bincount(keys.reshape(-1), minlength=n * ch * 256).reshape(n, ch, 256)


def autocontrast(images: np.ndarray) -> np.ndarray:
    """``ImageOps.autocontrast`` (cutoff 0): per-channel min-max stretch."""
    hist = _histograms(images)
    present = hist > 0
    lo = np.argmax(present, axis=-1)[..., None].astype(np.float64)
    hi = (255 - np.argmax(present[..., ::-1], axis=-1))[..., None].astype(np.float64)
    ix = np.arange(256, dtype=np.float64)
    scale = 255.0 / np.where(hi > lo, hi - lo, 1.0)
    lut = np.clip(np.trunc(ix * scale - lo * scale), 0, 255)
    lut = np.where(hi > lo, lut, ix)
    return _apply_luts(images, lut.astype(np.int64))


def equalize(images: np.ndarray) -> np.ndarray:
    """``ImageOps.equalize``: per-channel histogram equalisation (PIL's LUT rule)."""
    hist = _histograms(images)
    last = 255 - np.argmax(hist[..., ::-1] > 0, axis=-1)
    last_count = np.take_along_axis(hist, last[..., None], axis=-1)[..., 0]
    step = (hist.sum(-1) - last_count) // 255   # as Pillow 13 ImageOps.equalize
    used = (hist > 0).sum(-1)
    ok = (used > 1) & (step > 0)
    safe = np.where(ok, step, 1)[..., None]
    before = np.cumsum(hist, axis=-1) - hist
    lut = np.minimum((safe // 2 + before) // safe, 255)
    lut = np.where(ok[..., None], lut, np.arange(256))
    return _apply_luts(images, lut)


def invert(images: np.ndarray) -> np.ndarray:
    """``ImageOps.invert``."""
    return 255 - images


def solarize(images: np.ndarray, threshold: np.ndarray) -> np.ndarray:
    """``ImageOps.solarize``: pixels >= threshold are inverted (threshold per image)."""
    t = np.asarray(threshold, np.float64).reshape(-1, 1, 1, 1)
    return np.where(images >= t, 255 - images, images)


def posterize(images: np.ndarray, bits: np.ndarray) -> np.ndarray:
    """``ImageOps.posterize(int(bits))``: keep the top bits of every channel."""
    b = np.clip(np.asarray(bits).astype(np.int64), 1, 8).reshape(-1, 1, 1, 1)
    mask = (~((1 << (8 - b)) - 1)) & 0xFF
    return images & mask.astype(np.uint8)


def cutout_boxes(size: np.ndarray, cx: np.ndarray, cy: np.ndarray, height: int,
                 width: int) -> tuple[np.ndarray, ...]:
    """Inclusive pixel boxes (x0, y0, x1, y1) of the original's CutoutAbs.

    ``size`` px square around centre (cx, cy) (uniform in [0, W) x [0, H)): x0 =
    int(max(0, cx - size/2)), x1 = min(W, x0 + size), likewise y; PIL's rectangle fills
    pixels x0..int(x1) inclusive.
    """
    x0 = np.floor(np.maximum(0.0, cx - size / 2.0)).astype(np.int64)
    y0 = np.floor(np.maximum(0.0, cy - size / 2.0)).astype(np.int64)
    x1 = np.floor(np.minimum(width, x0 + size)).astype(np.int64)
    y1 = np.floor(np.minimum(height, y0 + size)).astype(np.int64)
    return x0, y0, x1, y1


def cutout(images: np.ndarray, size: np.ndarray, cx: np.ndarray, cy: np.ndarray) -> np.ndarray:
    """Fills the ``cutout_boxes`` with grey (125, 123, 114); size <= 0 leaves the image."""
    _, h, w, ch = images.shape
    size = np.asarray(size, np.float64)
    x0, y0, x1, y1 = cutout_boxes(size, np.asarray(cx), np.asarray(cy), h, w)
    cols, rows = np.arange(w), np.arange(h)
    inside = (((rows >= y0[:, None]) & (rows <= y1[:, None]))[:, :, None] &
              ((cols >= x0[:, None]) & (cols <= x1[:, None]))[:, None, :] &
              (size > 0)[:, None, None])
    fill = np.resize(np.asarray(CUTOUT_FILL, np.uint8), ch)
    return np.where(inside[..., None], fill, images)
