"""Checkerboard-artifact metrics: the decoder's fingerprint (docs/architecture.md, Metrics).

* :func:`artifact_periodic_energy` — share of a logit map's non-DC spectral energy on the
  stride-2/stride-4 lattice {0, N/4, N/2, 3N/4}² (minus DC). A (-1)^(x+y) checkerboard scores 1, a
  smooth blob ≈ 0. :func:`artifact_periodic_energy_gt` is the same on the truth (2·mask − 1), and
  :func:`artifact_excess` their ratio.
* :func:`overlap_unevenness` — analytic, the logged ``artifact_overlap_unevenness`` of a decoder
  (defined there, once: (max − min)/max of the kernel taps reaching each output pixel of one 2x2
  period of the decoder's upsampling layer); :func:`artifact_overlap_unevenness` is the same for a
  transposed convolution given its kernel size and stride.
* :func:`artifact_const_response` — feed a constant map to every decoder block's upsampling operator
  (the layer named ``decoder{stage}_up``); per channel std/mean|·| of the interior; mean over
  channels, max over stages. 0 means checkerboard-free by construction (Sugawara et al. 2019).

Conventions chosen here (docs/architecture.md, Metrics, leaves them to this module):

* Maps whose side is not divisible by 4 are centre-cropped (per axis) to the largest multiple of 4
  (101 → 100, offset 0: rows/cols 0..99). Non-square maps are allowed; the lattice is taken per axis.
* Images with (numerically) zero non-DC energy — constant maps, e.g. the 2·mask − 1 of an empty mask —
  carry no spectral information and are **skipped** in the average; if every image is skipped the
  score is 0.0.
* :func:`artifact_excess` returns NaN when the ground-truth score is 0 (nothing to compare to).
"""

from __future__ import annotations

import numpy as np

from segnet.metrics.segmentation import as_stack

__all__ = [
    "crop_to_multiple",
    "periodic_energy_scores",
    "artifact_periodic_energy",
    "artifact_periodic_energy_gt",
    "artifact_excess",
    "overlap_counts",
    "overlap_unevenness",
    "artifact_overlap_unevenness",
    "artifact_const_response",
    "const_response_maps",
]

_ZERO_ENERGY_RTOL = 1e-20  # variance below this × mean square counts as a constant map




def crop_to_multiple(maps: np.ndarray, multiple: int = 4) -> np.ndarray:
    """Centre-crop the two spatial axes of (B, H, W) to the largest multiple of ``multiple``."""
    a = as_stack(maps)
    h, w = a.shape[1:]
    hh, ww = h - h % multiple, w - w % multiple
    if hh == 0 or ww == 0:
        raise ValueError(f"maps of size {h}x{w} are smaller than {multiple}")
    oh, ow = (h - hh) // 2, (w - ww) // 2
    return a[:, oh : oh + hh, ow : ow + ww]


def periodic_energy_scores(maps: np.ndarray, chunk: int = 256) -> np.ndarray:
    """Per-image periodic-energy share, shape (B,); NaN for images with zero non-DC energy."""
    z = crop_to_multiple(maps).astype(np.float64)
    b, h, w = z.shape
    iu = np.array([0, h // 4, h // 2, 3 * h // 4])
    iv = np.array([0, w // 4, w // 2, 3 * w // 4])
    out = np.empty(b, dtype=np.float64)
    for s in range(0, b, chunk):  # chunks only bound memory; each chunk is vectorised
        raw = z[s : s + chunk]
        zc = raw - raw.mean(axis=(1, 2), keepdims=True)
        e = np.abs(np.fft.fft2(zc, axes=(1, 2))) ** 2
        dc = e[:, 0, 0]
        lattice = e[:, iu][:, :, iv].sum(axis=(1, 2)) - dc
        total = e.sum(axis=(1, 2)) - dc
        # zero non-DC energy (constant map, up to rounding): variance tiny relative to the mean square
        ok = np.mean(zc**2, axis=(1, 2)) > _ZERO_ENERGY_RTOL * np.mean(raw**2, axis=(1, 2))
        ok &= total > 0
        out[s : s + chunk] = np.where(ok, lattice / np.where(ok, total, 1.0), np.nan)
    return out


def artifact_periodic_energy(logits: np.ndarray) -> float:
    """Mean lattice energy share of predicted logit maps (B,N,N) or (B,N,N,1) at network resolution.

    Images with zero non-DC energy are skipped; 0.0 if all are.
    """
    s = periodic_energy_scores(logits)
    s = s[np.isfinite(s)]
    return float(s.mean()) if s.size else 0.0


def artifact_periodic_energy_gt(masks: np.ndarray) -> float:
    """:func:`artifact_periodic_energy` of the ground truth, taken as 2·mask − 1 (empty masks skipped)."""
    m = as_stack(masks).astype(np.float64)
    return artifact_periodic_energy(2.0 * m - 1.0)


def artifact_excess(pred_energy: float, gt_energy: float) -> float:
    """``pred_energy / gt_energy``; NaN when the ground-truth energy is 0 (or not finite)."""
    if not np.isfinite(gt_energy) or gt_energy <= 0.0:
        return float("nan")
    return float(pred_energy) / float(gt_energy)


def _pair(v) -> tuple[int, int]:
    if isinstance(v, int | np.integer):
        return int(v), int(v)
    a, b = v
    return int(a), int(b)


def overlap_counts(kernel_size, stride) -> np.ndarray:
    """Number of kernel taps of a transposed conv reaching each output pixel of one period.

    1-D: output o = i·s + j receives taps j ≡ o (mod s), 0 ≤ j < k, i.e. ceil((k − r)/s) for residue
    r < k, else 0. 2-D is the outer product: shape (s_h, s_w).
    """
    (kh, kw), (sh, sw) = _pair(kernel_size), _pair(stride)
    if min(kh, kw, sh, sw) < 1:
        raise ValueError("kernel_size and stride must be >= 1")

    def one(k: int, s: int) -> np.ndarray:
        r = np.arange(s)
        return np.where(r < k, -(-(k - r) // s), 0)

    return np.outer(one(kh, sh), one(kw, sw))


def overlap_unevenness(taps) -> float:
    """The overlap unevenness of an upsampling operator: ``(max − min) / max`` of ``taps``.

    This is THE definition of the logged ``artifact_overlap_unevenness`` (and of what ``segnet shapes``
    prints); every decoder's number comes from here, through its ``DecoderSpec.overlap_taps``:

    * **What is measured: the upsampling operator alone** — the one layer ``decoder{stage}_up`` as a
      whole, i.e. the zero insertion / unpooling / resize *together with the convolution that layer
      holds* (the same layer :func:`artifact_const_response` probes), but not the two merge convs after
      the skip concatenation, which treat every pixel alike.
    * ``taps[i, j]``: the number of kernel taps that carry an input value to the output pixel at phase
      ``(i, j)`` of one 2x2 period, away from the borders, for a constant input (the non-zero positions
      of a constant map for unpooling, whose positions are data-dependent). Only counts, not weights:
      the 4 independent sub-kernels of a sub-pixel conv without ICNR are even by this measure
      (``artifact_const_response`` sees their differences).
    * 0: every output pixel gets the same number of taps; 1: some output pixel gets none.

    Per decoder (``segnet shapes`` prints each grid): transposed k=3 ``[[4, 2], [2, 1]]`` → 0.75; k=4 all 4
    → 0; bed_of_nails (zero insertion + conv 3x3 = transposed k=3) ``[[1, 2], [2, 4]]`` → 0.75; maxunpool
    (conv 1x1 + unpooling: a kernel-1 stride-2 scatter) ``[[1, 0], [0, 0]]`` → 1; upsampling, pixel_shuffle,
    bilinear_additive (a 3x3 conv at every output pixel) all 9 → 0.
    """
    t = np.asarray(taps, dtype=np.float64)
    if t.size == 0 or t.max() <= 0:
        raise ValueError(f"taps must hold a positive count; got {t.tolist()}")
    return float((t.max() - t.min()) / t.max())


def artifact_overlap_unevenness(kernel_size, stride) -> float:
    """:func:`overlap_unevenness` of a transposed conv's :func:`overlap_counts` (k=3,s=2 → 0.75; k=4,s=2 → 0;
    k=1,s=2 → 1)."""
    return overlap_unevenness(overlap_counts(kernel_size, stride))


# ----------------------------------------------------------------------------- constant response


def _iter_up_layers(model):
    stage = 1
    while True:
        try:
            layer = model.get_layer(f"decoder{stage}_up")
        except ValueError:
            return
        yield stage, layer
        stage += 1


def _input_shapes(layer) -> list[tuple]:
    """Shapes of the tensors that feed ``layer`` in its (first) call in the model graph."""
    nodes = getattr(layer, "_inbound_nodes", None) or []
    for node in nodes:
        tensors = list(getattr(node, "input_tensors", []) or [])
        if tensors:
            return [tuple(t.shape) for t in tensors]
    inp = layer.input  # raises when the layer was never called: nothing sensible to feed then
    inp = inp if isinstance(inp, list | tuple) else [inp]
    return [tuple(t.shape) for t in inp]


def _constant_indices(h: int, w: int, c: int):
    """Argmax indices of 2×2 max pooling of a constant (1, 2h, 2w, c) map, as the encoder makes them.

    Uses the encoder's own pooling layer when segnet.models.layers provides one, else
    ``tf.nn.max_pool_with_argmax`` (ksize 2, stride 2, SAME, include_batch_in_index=True).
    """
    import tensorflow as tf

    x = tf.ones((1, 2 * h, 2 * w, c), tf.float32)
    pool = _encoder_pool_layer()
    if pool is not None:
        out = pool(x)
        return out[1] if isinstance(out, list | tuple) else out
    _, idx = tf.nn.max_pool_with_argmax(x, ksize=2, strides=2, padding="SAME", include_batch_in_index=True)
    return idx


def _encoder_pool_layer():
    try:
        from segnet.models import layers as L  # noqa: N812
    except Exception:  # the models package is optional for this module
        return None
    cls = getattr(L, "MaxPoolWithArgmax", None)
    return cls() if cls is not None else None


def const_response_maps(model, needs_indices: bool, size: int = 16) -> list[np.ndarray]:
    """Output of each stage's upsampling operator for a constant input of ones (size×size), float64.

    Returns one (H_out, W_out, C_out) array per stage (stage 1 first).
    """
    import tensorflow as tf

    maps = []
    for _stage, layer in _iter_up_layers(model):
        shapes = _input_shapes(layer)
        c = int(shapes[0][-1])
        x = tf.ones((1, size, size, c), tf.float32)
        if needs_indices:
            ci = int(shapes[1][-1]) if len(shapes) > 1 and shapes[1][-1] is not None else c
            y = layer([x, _constant_indices(size, size, ci)], training=False)
        else:
            y = layer(x, training=False)
        y = y[0] if isinstance(y, list | tuple) else y
        maps.append(np.asarray(y, dtype=np.float64)[0])
    return maps


def _response_score(m: np.ndarray, border: int) -> float:
    h, w = m.shape[:2]
    if h <= 2 * border or w <= 2 * border:
        raise ValueError(f"response map {h}x{w} too small for border {border}")
    inner = m[border : h - border, border : w - border].reshape(-1, m.shape[-1])
    std = inner.std(axis=0)
    mag = np.abs(inner).mean(axis=0)
    ratio = np.where(mag > 0, std / np.where(mag > 0, mag, 1.0), 0.0)  # all-zero channel: flat
    return float(ratio.mean())


def artifact_const_response(
    model, needs_indices: bool, border: int = 2, size: int = 16, return_maps: bool = False
) -> dict:
    """Constant-input response of every ``decoder{stage}_up`` layer of ``model``.

    For each stage a (1, size, size, C_in) map of ones (with indices from pooling a constant
    (1, 2·size, 2·size, C) map when ``needs_indices``) goes through the layer; per output channel
    std/mean|·| over the interior (``border`` pixels dropped each side), averaged over channels.
    Returns ``{"per_stage": [float, ...], "max": float}`` (+ ``"maps"``: list of (H, W, C) arrays when
    ``return_maps``). ``max`` is the logged ``artifact_const_response``; 0.0 when no stage is found.
    """
    maps = const_response_maps(model, needs_indices, size=size)
    per_stage = [_response_score(m, border) for m in maps]
    out = {"per_stage": per_stage, "max": float(max(per_stage)) if per_stage else 0.0}
    if return_maps:
        out["maps"] = maps
    return out
