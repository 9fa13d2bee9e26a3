"""Convolution and transposed convolution from first principles, in numpy: the seeds' mathematics.

Each operator comes in three forms that must agree with each other and with Keras:

* **sliding window** — the textbook loop: every output pixel is a window of the (padded) input times
  the kernel. The transposed convolution is the sliding window over the *zero-dilated* input with
  the kernel flipped and its channel axes swapped.
* **scatter-add** — "multiply each input pixel by the kernel and sum the overlaps": every input
  pixel adds a kernel-shaped stamp to the output. This is the picture that explains checkerboards:
  with stride s and kernel k, output pixels receive unequal numbers of stamps (``overlap_pattern``).
* **matrix** — a convolution is a linear map, ``y = C x``; the transposed convolution is ``x' = C^T y``
  with the *same* C (that is where the name comes from). ``<C x, y> == <x, C^T y>``.

Conventions (those of Keras/TensorFlow, NHWC without the batch axis):

* images are ``(H, W, C)`` arrays (a 2-D ``(H, W)`` array is taken as one channel);
* ``conv2d`` is a cross-correlation with a Keras ``Conv2D`` kernel ``(kh, kw, cin, cout)``;
* ``conv2d_transpose`` uses a Keras ``Conv2DTranspose`` kernel ``(kh, kw, cout, cin)`` — the forward
  kernel of the convolution it is the transpose of (which maps ``cout`` channels to ``cin``);
* ``padding="valid"``: no padding; ``conv`` out = ``(in - k) // s + 1``;
  transposed out = ``in * s + max(k - s, 0)`` (= ``(in - 1) * s + k`` when ``k >= s``; Keras pads the
  tail with zeros when ``k < s`` so that the output is never shorter than ``in * s``);
* ``padding="same"``: ``conv`` out = ``ceil(in / s)`` and the total padding
  ``max((out - 1) * s + k - in, 0)`` is split with the smaller half *before* (TF puts the odd pixel
  after). The transposed conv is the exact adjoint: out = ``in * s`` and it crops what the forward
  convolution from ``out`` back to ``in`` would have padded: ``pad_before = max((in - 1) * s + k - out, 0) // 2``
  per axis (TF's ``conv2d_backprop_input``). Computing that once from a square shape and reusing it
  for both axes — the widely copied shortcut — is wrong for non-square kernels and strides.

Strides and kernels may differ per axis (``int`` or ``(h, w)`` pairs). Float64 throughout.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from segnet.metrics.artifacts import overlap_counts
from segnet.metrics.artifacts import overlap_unevenness as unevenness

__all__ = [
    "PADDINGS",
    "conv_output_length",
    "conv_transpose_output_length",
    "conv2d_output_shape",
    "conv2d_transpose_output_shape",
    "conv_padding",
    "conv_transpose_crop",
    "conv2d",
    "conv2d_sliding",
    "conv2d_scatter",
    "conv2d_matrix",
    "conv_matrix",
    "conv2d_transpose",
    "conv2d_transpose_sliding",
    "conv2d_transpose_scatter",
    "conv2d_transpose_matrix",
    "conv_transpose_matrix",
    "overlap_pattern",
    "overlap_unevenness",
]

PADDINGS = ("valid", "same")
METHODS = ("sliding", "scatter", "matrix")

IntOrPair = int | Sequence[int]


# ----------------------------------------------------------------------------- shapes and padding


def _pair(v: IntOrPair) -> tuple[int, int]:
    if isinstance(v, int | np.integer):
        return int(v), int(v)
    a, b = v
    return int(a), int(b)


def _check_padding(padding: str) -> str:
    p = padding.lower()
    if p not in PADDINGS:
        raise ValueError(f"padding must be one of {', '.join(PADDINGS)}; got {padding!r}")
    return p


def conv_output_length(length: int, k: int, s: int, padding: str) -> int:
    """Output length of a 1-D convolution (Keras/TF): 'valid' ``(in-k)//s + 1``, 'same' ``ceil(in/s)``."""
    if _check_padding(padding) == "same":
        return -(-length // s)
    if length < k:
        raise ValueError(f"'valid' convolution needs input >= kernel; got input {length}, kernel {k}")
    return (length - k) // s + 1


def conv_transpose_output_length(length: int, k: int, s: int, padding: str) -> int:
    """Output length of a 1-D transposed convolution (Keras): 'same' ``in*s``, 'valid' ``in*s + max(k-s, 0)``."""
    if _check_padding(padding) == "same":
        return length * s
    return length * s + max(k - s, 0)


def conv2d_output_shape(in_hw: IntOrPair, kernel_size: IntOrPair, strides: IntOrPair = 1, padding="valid"):
    """``(H_out, W_out)`` of ``Conv2D``."""
    (h, w), (kh, kw), (sh, sw) = _pair(in_hw), _pair(kernel_size), _pair(strides)
    return conv_output_length(h, kh, sh, padding), conv_output_length(w, kw, sw, padding)


def conv2d_transpose_output_shape(in_hw: IntOrPair, kernel_size: IntOrPair, strides: IntOrPair = 1, padding="valid"):
    """``(H_out, W_out)`` of ``Conv2DTranspose`` (no ``output_padding``)."""
    (h, w), (kh, kw), (sh, sw) = _pair(in_hw), _pair(kernel_size), _pair(strides)
    return conv_transpose_output_length(h, kh, sh, padding), conv_transpose_output_length(w, kw, sw, padding)


def conv_padding(length: int, k: int, s: int, padding: str) -> tuple[int, int]:
    """``(before, after)`` zero padding of a 1-D convolution, as TF pads: the odd pixel goes after."""
    if _check_padding(padding) == "valid":
        return 0, 0
    out = conv_output_length(length, k, s, "same")
    total = max((out - 1) * s + k - length, 0)
    return total // 2, total - total // 2


def conv_transpose_crop(length: int, k: int, s: int, padding: str) -> int:
    """Offset of a transposed convolution's output inside the full scatter-add canvas.

    The transposed convolution from ``length`` to ``out`` is the adjoint of the convolution from ``out``
    to ``length``; it drops the ``pad_before`` pixels that convolution would have padded in front.
    """
    out = conv_transpose_output_length(length, k, s, padding)
    return conv_padding(out, k, s, padding)[0]


# ----------------------------------------------------------------------------- argument handling


def _image(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, dtype=np.float64)
    if x.ndim == 2:
        x = x[:, :, None]
    if x.ndim != 3:
        raise ValueError(f"expected an (H, W) or (H, W, C) image; got shape {x.shape}")
    return x


def _kernel(kernel: np.ndarray) -> np.ndarray:
    kernel = np.asarray(kernel, dtype=np.float64)
    if kernel.ndim == 2:
        kernel = kernel[:, :, None, None]
    if kernel.ndim != 4:
        raise ValueError(f"expected an (kh, kw) or (kh, kw, c1, c2) kernel; got shape {kernel.shape}")
    return kernel


def _check_channels(x: np.ndarray, kernel: np.ndarray, axis: int, what: str) -> None:
    if x.shape[-1] != kernel.shape[axis]:
        raise ValueError(f"{what}: image has {x.shape[-1]} channels, kernel expects {kernel.shape[axis]}")


# ----------------------------------------------------------------------------- convolution


def conv2d_sliding(x, kernel, strides: IntOrPair = 1, padding: str = "valid") -> np.ndarray:
    """Conv2D as a sliding window: ``y[i, j, o] = Σ_{a,b,c} x_pad[i*sh + a, j*sw + b, c] · K[a, b, c, o]``."""
    x, kernel = _image(x), _kernel(kernel)
    _check_channels(x, kernel, 2, "conv2d")
    kh, kw = kernel.shape[:2]
    sh, sw = _pair(strides)
    (pt, pb), (pl, pr) = conv_padding(x.shape[0], kh, sh, padding), conv_padding(x.shape[1], kw, sw, padding)
    xp = np.pad(x, ((pt, pb), (pl, pr), (0, 0)))
    ho, wo = conv2d_output_shape(x.shape[:2], (kh, kw), (sh, sw), padding)
    y = np.zeros((ho, wo, kernel.shape[3]))
    for i in range(ho):
        for j in range(wo):
            window = xp[i * sh : i * sh + kh, j * sw : j * sw + kw, :]
            y[i, j] = np.tensordot(window, kernel, axes=([0, 1, 2], [0, 1, 2]))
    return y


def conv2d_scatter(x, kernel, strides: IntOrPair = 1, padding: str = "valid") -> np.ndarray:
    """Conv2D seen from the input: pixel ``x[r, c]`` meets tap ``(a, b)`` in output ``((r+pt-a)/sh, (c+pl-b)/sw)``
    whenever both divisions are exact and land inside the output; each such meeting adds ``x·K[a, b]``.
    """
    x, kernel = _image(x), _kernel(kernel)
    _check_channels(x, kernel, 2, "conv2d")
    kh, kw = kernel.shape[:2]
    sh, sw = _pair(strides)
    pt, pl = conv_padding(x.shape[0], kh, sh, padding)[0], conv_padding(x.shape[1], kw, sw, padding)[0]
    ho, wo = conv2d_output_shape(x.shape[:2], (kh, kw), (sh, sw), padding)
    y = np.zeros((ho, wo, kernel.shape[3]))
    for r in range(x.shape[0]):
        for c in range(x.shape[1]):
            for a in range(kh):
                for b in range(kw):
                    qi, ri = divmod(r + pt - a, sh)
                    qj, rj = divmod(c + pl - b, sw)
                    if ri == 0 and rj == 0 and 0 <= qi < ho and 0 <= qj < wo:
                        y[qi, qj] += x[r, c] @ kernel[a, b]
    return y


def conv_matrix(in_shape: Sequence[int], kernel, strides: IntOrPair = 1, padding: str = "valid") -> np.ndarray:
    """The matrix C of Conv2D on ``(H, W, Cin)`` inputs: ``conv2d(x).ravel() == C @ x.ravel()`` (row-major HWC).

    Shape ``(H_out * W_out * Cout, H * W * Cin)``. Its transpose is the transposed convolution.
    """
    h, w, cin = (int(v) for v in in_shape)
    kernel = _kernel(kernel)
    kh, kw, kcin, cout = kernel.shape
    if kcin != cin:
        raise ValueError(f"conv_matrix: input has {cin} channels, kernel expects {kcin}")
    sh, sw = _pair(strides)
    pt, pl = conv_padding(h, kh, sh, padding)[0], conv_padding(w, kw, sw, padding)[0]
    ho, wo = conv2d_output_shape((h, w), (kh, kw), (sh, sw), padding)
    c_mat = np.zeros((ho, wo, cout, h, w, cin))
    for i in range(ho):
        for j in range(wo):
            for a in range(kh):
                for b in range(kw):
                    r, c = i * sh + a - pt, j * sw + b - pl
                    if 0 <= r < h and 0 <= c < w:  # taps on the zero padding contribute nothing
                        c_mat[i, j, :, r, c, :] += kernel[a, b].T  # (cout, cin)
    return c_mat.reshape(ho * wo * cout, h * w * cin)


def conv2d_matrix(x, kernel, strides: IntOrPair = 1, padding: str = "valid") -> np.ndarray:
    """Conv2D as ``C @ x``."""
    x, kernel = _image(x), _kernel(kernel)
    ho, wo = conv2d_output_shape(x.shape[:2], kernel.shape[:2], strides, padding)
    c_mat = conv_matrix(x.shape, kernel, strides, padding)
    return (c_mat @ x.ravel()).reshape(ho, wo, kernel.shape[3])


def conv2d(x, kernel, strides: IntOrPair = 1, padding: str = "valid", method: str = "sliding") -> np.ndarray:
    """Keras ``Conv2D`` (no bias) on one ``(H, W, Cin)`` image with kernel ``(kh, kw, cin, cout)``."""
    return _dispatch(method, conv2d_sliding, conv2d_scatter, conv2d_matrix)(x, kernel, strides, padding)


# ----------------------------------------------------------------------------- transposed convolution


def conv2d_transpose_scatter(y, kernel, strides: IntOrPair = 1, padding: str = "valid") -> np.ndarray:
    """Transposed conv as scatter-add: each input pixel stamps ``y[i, j] · K`` at ``(i*sh, j*sw)`` on a canvas;
    the stamps overlap and add; the output is the canvas window starting at the ``same`` crop offset.
    """
    y, kernel = _image(y), _kernel(kernel)
    _check_channels(y, kernel, 3, "conv2d_transpose")
    kh, kw, cout, _ = kernel.shape
    sh, sw = _pair(strides)
    h, w = y.shape[:2]
    ho, wo = conv2d_transpose_output_shape((h, w), (kh, kw), (sh, sw), padding)
    pt, pl = conv_transpose_crop(h, kh, sh, padding), conv_transpose_crop(w, kw, sw, padding)
    canvas = np.zeros((max((h - 1) * sh + kh, pt + ho), max((w - 1) * sw + kw, pl + wo), cout))
    for i in range(h):
        for j in range(w):
            stamp = np.tensordot(kernel, y[i, j], axes=([3], [0]))  # (kh, kw, cout)
            canvas[i * sh : i * sh + kh, j * sw : j * sw + kw] += stamp
    return canvas[pt : pt + ho, pl : pl + wo]


def conv2d_transpose_sliding(y, kernel, strides: IntOrPair = 1, padding: str = "valid") -> np.ndarray:
    """Transposed conv as an ordinary stride-1 sliding window over the zero-dilated input.

    Insert ``s - 1`` zeros between input pixels, pad ``k - 1`` zeros in front (and enough after), and
    cross-correlate with the kernel flipped in space and with its channel axes swapped. Output pixel
    ``o`` reads the window starting at ``o + pad_before``.
    """
    y, kernel = _image(y), _kernel(kernel)
    _check_channels(y, kernel, 3, "conv2d_transpose")
    kh, kw, cout, cin = kernel.shape
    sh, sw = _pair(strides)
    h, w = y.shape[:2]
    ho, wo = conv2d_transpose_output_shape((h, w), (kh, kw), (sh, sw), padding)
    pt, pl = conv_transpose_crop(h, kh, sh, padding), conv_transpose_crop(w, kw, sw, padding)
    dil = np.zeros((kh - 1 + pt + ho + kh, kw - 1 + pl + wo + kw, cin))
    dil[kh - 1 : kh - 1 + (h - 1) * sh + 1 : sh, kw - 1 : kw - 1 + (w - 1) * sw + 1 : sw] = y
    flipped = kernel[::-1, ::-1].transpose(0, 1, 3, 2)  # (kh, kw, cin, cout)
    out = np.zeros((ho, wo, cout))
    for i in range(ho):
        for j in range(wo):
            window = dil[i + pt : i + pt + kh, j + pl : j + pl + kw]
            out[i, j] = np.tensordot(window, flipped, axes=([0, 1, 2], [0, 1, 2]))
    return out


def conv_transpose_matrix(in_shape: Sequence[int], kernel, strides: IntOrPair = 1, padding: str = "valid") -> np.ndarray:
    """The matrix of Conv2DTranspose on ``(H, W, Cin)`` inputs: ``C^T`` of the forward convolution.

    The forward convolution maps the transposed conv's *output* shape back to ``in_shape`` with the
    same kernel (read as a Conv2D kernel ``(kh, kw, cout, cin)``), stride and padding.
    """
    h, w, cin = (int(v) for v in in_shape)
    kernel = _kernel(kernel)
    kh, kw, cout, kcin = kernel.shape
    if kcin != cin:
        raise ValueError(f"conv_transpose_matrix: input has {cin} channels, kernel expects {kcin}")
    ho, wo = conv2d_transpose_output_shape((h, w), (kh, kw), strides, padding)
    back = conv2d_output_shape((ho, wo), (kh, kw), strides, padding)
    if back != (h, w):  # cannot happen for Keras shapes; guards the derivation above
        raise AssertionError(f"forward conv of {ho}x{wo} gives {back}, not {h}x{w}")
    return conv_matrix((ho, wo, cout), kernel, strides, padding).T


def conv2d_transpose_matrix(y, kernel, strides: IntOrPair = 1, padding: str = "valid") -> np.ndarray:
    """Transposed conv as ``C^T @ y``."""
    y, kernel = _image(y), _kernel(kernel)
    ho, wo = conv2d_transpose_output_shape(y.shape[:2], kernel.shape[:2], strides, padding)
    ct = conv_transpose_matrix(y.shape, kernel, strides, padding)
    return (ct @ y.ravel()).reshape(ho, wo, kernel.shape[2])


def conv2d_transpose(y, kernel, strides: IntOrPair = 1, padding: str = "valid", method: str = "scatter") -> np.ndarray:
    """Keras ``Conv2DTranspose`` (no bias) on one ``(H, W, Cin)`` image with kernel ``(kh, kw, cout, cin)``."""
    return _dispatch(method, conv2d_transpose_sliding, conv2d_transpose_scatter, conv2d_transpose_matrix)(
        y, kernel, strides, padding
    )


def _dispatch(method: str, sliding, scatter, matrix):
    table = {"sliding": sliding, "scatter": scatter, "matrix": matrix}
    if method not in table:
        raise ValueError(f"method must be one of {', '.join(METHODS)}; got {method!r}")
    return table[method]


# ----------------------------------------------------------------------------- overlap (checkerboards)


def overlap_pattern(k: IntOrPair, s: IntOrPair) -> np.ndarray:
    """How many kernel taps of a stride-``s`` transposed conv reach each output pixel of one ``s × s`` period.

    Away from the borders, output pixel ``o`` (canvas coordinates) gets one stamp tap ``a`` from every
    input pixel with ``o = i*s + a``, i.e. one tap per ``a ≡ o (mod s)``; in 1-D that is
    ``ceil((k - r) / s)`` for phase ``r`` (0 when ``r >= k``); in 2-D the product over the axes.
    Phase 0 is the canvas origin (``'valid'`` output; ``'same'`` shifts it by the crop offset).
    k=3, s=2 → [[4, 2], [2, 1]]; k=4, s=2 → all 4.
    """
    try:
        return overlap_counts(k, s).astype(int)
    except ValueError:
        raise ValueError(f"kernel size and stride must be >= 1; got k={k}, s={s}") from None


def overlap_unevenness(k: IntOrPair, s: IntOrPair) -> float:
    """``(max - min) / max`` of :func:`overlap_pattern`: 0 means every output pixel gets the same number of
    taps (no built-in checkerboard); k=3, s=2 → 0.75; k=4, s=2 → 0; k=1, s=2 → 1 (zero insertion or unpooling alone).
    The definition is :func:`segnet.metrics.artifacts.overlap_unevenness`."""
    return unevenness(overlap_pattern(k, s))
