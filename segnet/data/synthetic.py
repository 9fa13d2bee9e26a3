"""A seismic-looking synthetic TGS dataset, written in the exact Kaggle layout.

Each 101x101 image is built from:

* a layered background: a 1-D reflectivity series (sparse spikes convolved with a Ricker wavelet) read
  along a warped depth coordinate (smooth random folds plus a dip), with lateral amplitude changes;
* optionally a salt body (about 61 % of the images): a mask thresholded from a smooth field that rises
  from the bottom (dome, wall or blob shapes) at a sampled coverage, so coverage spreads like TGS
  (about 39 % empty, mean about 0.25, median about 0.05, some near-full); inside the salt the reflectors
  are suppressed and replaced by weak chaotic noise, and its boundary is a bright reflector;
* band-limited noise and a random gain/offset.

Image ``i`` uses ``numpy.random.default_rng([seed, 0, i])`` (test image ``j``: ``[seed, 1, j]``), so images
are independent of each other and the same seed gives byte-identical files.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np

from segnet.data.tgs import IMG_SIZE, DatasetWriter, _progress

try:
    import cv2
except ImportError:  # pragma: no cover - OpenCV comes with albumentations
    cv2 = None

GENERATOR_VERSION = 1
DEFAULT_N = 1000
DEFAULT_SEED = 0
P_EMPTY = 0.39  # TGS: 1367 of 3500 masks are empty
P_BLACK = 0.01  # TGS has a few all-black images, always with empty masks
P_SMALL = 0.30  # among salt images: share of small bodies (log-uniform coverage 0.01..0.15)

_H = _W = IMG_SIZE
_Y, _X = np.mgrid[0:_H, 0:_W].astype(np.float64)
_YN, _XN = _Y / (_H - 1), _X / (_W - 1)  # 0..1
_T = np.arange(-120.0, 240.0, 0.5)  # depth samples of the 1-D reflectivity trace (covers any warp)


def _blur(a: np.ndarray, sigma: float) -> np.ndarray:
    if cv2 is not None:
        return cv2.GaussianBlur(a, (0, 0), sigmaX=sigma, sigmaY=sigma, borderType=cv2.BORDER_REFLECT_101)
    # numpy fallback: separable convolution (slower, same idea)
    r = int(3 * sigma + 0.5)
    k = np.exp(-0.5 * (np.arange(-r, r + 1) / sigma) ** 2)
    k /= k.sum()
    p = np.pad(a, r, mode="reflect")
    p = np.apply_along_axis(lambda v: np.convolve(v, k, "valid"), 0, p)
    return np.apply_along_axis(lambda v: np.convolve(v, k, "valid"), 1, p)


def _smooth_noise(rng: np.random.Generator, sigma: float) -> np.ndarray:
    """White noise low-passed with a Gaussian of ``sigma`` px, normalised to zero mean, unit std.

    Wide filters are applied on a coarse grid (factor sigma/2) and upsampled: same spectrum, ~10x cheaper.
    """
    f = max(1.0, sigma / 2.0)
    s = sigma / f
    pad = int(2 * s) + 2
    n = int(np.ceil(_H / f)) + 1
    a = rng.standard_normal((n + 2 * pad, n + 2 * pad)).astype(np.float32)
    a = _blur(a, s)[pad : pad + n, pad : pad + n]
    if f > 1.0:
        a = _resize(a, f)
    a = a[:_H, :_W].astype(np.float64)
    a = a - a.mean()
    return a / (a.std() + 1e-12)


def _resize(a: np.ndarray, f: float) -> np.ndarray:
    """Upsample a coarse (n, n) grid by ``f`` to at least 101x101 (bicubic)."""
    size = int(np.ceil(a.shape[0] * f))
    if cv2 is not None:
        return cv2.resize(a, (size, size), interpolation=cv2.INTER_CUBIC)
    idx = np.minimum((np.arange(size) / f).astype(int), a.shape[0] - 1)  # pragma: no cover
    return a[np.ix_(idx, idx)]  # pragma: no cover


def _ricker(wavelength: float) -> np.ndarray:
    """Ricker wavelet sampled at the trace step (0.5 px), peak wavelength ``wavelength`` px."""
    t = np.arange(-3 * wavelength, 3 * wavelength + 0.5, 0.5)
    a = (np.pi * t / wavelength) ** 2
    return (1 - 2 * a) * np.exp(-a)


def _background(rng: np.random.Generator) -> np.ndarray:
    # Warped depth: a dip plus a few smooth folds.
    dip = np.tan(np.deg2rad(rng.uniform(-20, 20))) * (_X - _W / 2)
    warp = np.zeros((_H, _W))
    for _ in range(rng.integers(1, 4)):
        amp = rng.uniform(0, 9)
        kx = rng.uniform(0.5, 2.5) * 2 * np.pi / _W
        ky = rng.uniform(0.0, 1.0) * 2 * np.pi / _H
        warp += amp * np.sin(kx * _X + rng.uniform(0, 2 * np.pi)) * np.cos(ky * _Y + rng.uniform(0, 2 * np.pi))
    depth = _Y + dip + warp
    # 1-D reflectivity along depth: sparse spikes of random sign and size, convolved with a wavelet.
    spikes = rng.standard_normal(_T.size) * (rng.random(_T.size) < rng.uniform(0.05, 0.2))
    trace = np.convolve(spikes, _ricker(rng.uniform(4.0, 10.0)), mode="same")
    trace /= trace.std() + 1e-12
    layered = np.interp(depth, _T, trace)
    # Lateral and vertical amplitude changes.
    gain = 1.0 + 0.35 * _smooth_noise(rng, rng.uniform(8, 20)) + rng.uniform(-0.4, 0.4) * (_YN - 0.5)
    return layered * np.clip(gain, 0.2, None)


def _salt_mask(rng: np.random.Generator) -> np.ndarray:
    """A salt body at a sampled coverage: threshold a smooth field that tends to rise from the bottom."""
    if rng.random() < P_SMALL:
        coverage = float(np.exp(rng.uniform(np.log(0.01), np.log(0.15))))
    else:
        coverage = rng.uniform(0.15, 0.995)
    shape = rng.integers(0, 3)
    if shape == 0:  # dome: a parabola-like top rising from the bottom
        x0 = rng.uniform(-0.2, 1.2)
        width = rng.uniform(0.3, 1.5)
        field = _YN - rng.uniform(0.5, 3.0) * ((_XN - x0) / width) ** 2
    elif shape == 1:  # wall: salt flank on one side, slanted
        side = rng.choice([-1.0, 1.0])
        field = side * (_XN - 0.5) + rng.uniform(-0.6, 0.6) * (_YN - 0.5)
    else:  # blob: mostly the smooth field, mild bottom bias
        field = rng.uniform(0.0, 0.8) * _YN
    field = field + rng.uniform(0.05, 0.5) * _smooth_noise(rng, rng.uniform(6, 18))
    thr = np.quantile(field, 1.0 - coverage)
    return (field > thr).astype(np.uint8)


def synth_image(rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """One (image uint8 (101,101), mask uint8 {0,1} (101,101)) pair."""
    u = rng.random()
    if u < P_BLACK:
        return np.zeros((_H, _W), np.uint8), np.zeros((_H, _W), np.uint8)
    bg = _background(rng)
    if u < P_EMPTY:
        mask = np.zeros((_H, _W), np.uint8)
        img = bg
    else:
        mask = _salt_mask(rng)
        soft = _blur(mask.astype(np.float32), rng.uniform(0.8, 1.6)).astype(np.float64)
        chaos = rng.uniform(0.15, 0.35) * _smooth_noise(rng, rng.uniform(0.7, 1.5))
        inside = chaos + rng.uniform(0.0, 0.15) * bg
        rim = 4.0 * soft * (1.0 - soft)  # peaks on the boundary
        img = bg * (1.0 - soft) + inside * soft + rng.uniform(1.2, 2.5) * rim
    img = img + rng.uniform(0.05, 0.3) * _smooth_noise(rng, rng.uniform(0.6, 1.2))
    contrast = rng.uniform(0.09, 0.2)
    out = 0.5 + rng.uniform(-0.08, 0.08) + contrast * img
    return np.clip(np.round(out * 255.0), 0, 255).astype(np.uint8), mask


def synth_id(seed: int, i: int, split: str = "train") -> str:
    """A 10-hex-character id like Kaggle's, fixed by (seed, split, index)."""
    return hashlib.sha256(f"segnet-synthetic:{seed}:{split}:{i}".encode()).hexdigest()[:10]


def generate(
    out_dir: str | Path,
    n: int = DEFAULT_N,
    seed: int = DEFAULT_SEED,
    progress: bool | None = None,
    n_test: int | None = None,
) -> Path:
    """Write ``n`` synthetic training images (plus ``n_test``, default n//10, test images) to ``out_dir``.

    Written into a temporary folder beside ``out_dir`` and renamed at the end: a failure leaves nothing
    half-written. An existing dataset at ``out_dir`` is replaced.
    """
    n = int(n)
    seed = int(seed)
    if n < 1:
        raise ValueError(f"n must be >= 1, got {n}")
    n_test = n // 10 if n_test is None else int(n_test)
    marker = {"generator": "segnet.data.synthetic", "version": GENERATOR_VERSION, "n": n, "seed": seed,
              "n_test": n_test}
    with DatasetWriter(out_dir, marker=marker) as w:
        for i in _progress(range(n), n, "synthetic train", progress):
            rng = np.random.default_rng([seed, 0, i])
            img, mask = synth_image(rng)
            w.add_train(synth_id(seed, i), img, mask, int(rng.integers(51, 960)))
        for j in _progress(range(n_test), n_test, "synthetic test", progress):
            rng = np.random.default_rng([seed, 1, j])
            img, _ = synth_image(rng)
            w.add_test(synth_id(seed, j, "test"), img, int(rng.integers(51, 960)))
        return w.close()
