"""The numpy reference equals Keras' Conv2D / Conv2DTranspose in all three forms, and C^T is the adjoint."""

from __future__ import annotations

import zlib

import keras
import numpy as np
import pytest

from segnet.models import reference as R

SIZES = [(5, 7), (6, 4)]  # non-square, odd and even
KERNELS = [(2, 2), (3, 3), (4, 4), (5, 5), (2, 3), (3, 5), (4, 2), (5, 1)]
STRIDES = [(1, 1), (2, 2), (3, 3), (2, 3), (3, 1)]
ATOL = 1e-4  # float64 reference vs float32 Keras


def _seed(*case) -> int:
    return zlib.crc32(repr(case).encode())  # fixed per case (hash() of a str changes between runs)


def _keras_conv(x, kernel, strides, padding):
    layer = keras.layers.Conv2D(kernel.shape[3], kernel.shape[:2], strides=strides, padding=padding, use_bias=False)
    layer.build((1, *x.shape))
    layer.kernel.assign(kernel.astype("float32"))
    return np.asarray(layer(x[None].astype("float32")))[0]


def _keras_conv_transpose(y, kernel, strides, padding):
    layer = keras.layers.Conv2DTranspose(
        kernel.shape[2], kernel.shape[:2], strides=strides, padding=padding, use_bias=False
    )
    layer.build((1, *y.shape))
    layer.kernel.assign(kernel.astype("float32"))
    return np.asarray(layer(y[None].astype("float32")))[0]


@pytest.mark.parametrize("padding", R.PADDINGS)
@pytest.mark.parametrize("strides", STRIDES, ids=str)
@pytest.mark.parametrize("kernel_size", KERNELS, ids=str)
def test_conv2d_matches_keras(kernel_size, strides, padding):
    rng = np.random.default_rng(_seed(kernel_size, strides, padding))
    for size in SIZES:
        if padding == "valid" and (size[0] < kernel_size[0] or size[1] < kernel_size[1]):
            continue
        x = rng.standard_normal((*size, 2))
        kernel = rng.standard_normal((*kernel_size, 2, 3))
        want = _keras_conv(x, kernel, strides, padding)
        assert want.shape[:2] == R.conv2d_output_shape(size, kernel_size, strides, padding)
        for method in R.METHODS:
            got = R.conv2d(x, kernel, strides, padding, method=method)
            assert got.shape == want.shape, (method, size)
            np.testing.assert_allclose(got, want, atol=ATOL, err_msg=f"{method} {size}")


@pytest.mark.parametrize("padding", R.PADDINGS)
@pytest.mark.parametrize("strides", STRIDES, ids=str)
@pytest.mark.parametrize("kernel_size", KERNELS, ids=str)
def test_conv2d_transpose_matches_keras(kernel_size, strides, padding):
    rng = np.random.default_rng(_seed(kernel_size, strides, padding, "t"))
    for size in SIZES:
        y = rng.standard_normal((*size, 3))
        kernel = rng.standard_normal((*kernel_size, 2, 3))  # Keras Conv2DTranspose: (kh, kw, cout, cin)
        want = _keras_conv_transpose(y, kernel, strides, padding)
        assert want.shape[:2] == R.conv2d_transpose_output_shape(size, kernel_size, strides, padding)
        for method in R.METHODS:
            got = R.conv2d_transpose(y, kernel, strides, padding, method=method)
            assert got.shape == want.shape, (method, size)
            np.testing.assert_allclose(got, want, atol=ATOL, err_msg=f"{method} {size}")


@pytest.mark.parametrize(
    "in_shape,kernel_size,strides,padding",
    [((6, 5, 2), (3, 3), 2, "same"), ((7, 4, 1), (4, 3), (2, 3), "same"), ((5, 6, 3), (2, 5), (3, 1), "valid")],
)
def test_transpose_is_the_adjoint(in_shape, kernel_size, strides, padding):
    """<C x, y> == <x, C^T y>, and conv2d_transpose is C^T of the conv it undoes (same kernel array)."""
    rng = np.random.default_rng(0)
    kernel = rng.standard_normal((*kernel_size, in_shape[2], 2))
    c = R.conv_matrix(in_shape, kernel, strides, padding)
    x = rng.standard_normal(in_shape)
    out_hw = R.conv2d_output_shape(in_shape[:2], kernel_size, strides, padding)
    y = rng.standard_normal((*out_hw, 2))
    lhs = np.dot(R.conv2d(x, kernel, strides, padding).ravel(), y.ravel())
    rhs = np.dot(x.ravel(), c.T @ y.ravel())
    assert np.isclose(lhs, rhs)
    # conv2d_transpose with the Conv2D kernel read as (kh, kw, cout=cin_fwd, cin=cout_fwd) is C^T; the output
    # shape of the transposed conv may differ from in_shape only where the forward conv drops pixels.
    back = R.conv2d_transpose(y, kernel, strides, padding)
    t_hw = back.shape[:2]
    ct = R.conv_matrix((*t_hw, in_shape[2]), kernel, strides, padding).T
    np.testing.assert_allclose(back.ravel(), ct @ y.ravel(), atol=1e-10)


def test_same_crop_is_per_axis_and_asymmetric():
    """'same' transposed conv crops pad_before = max((in-1)*s + k - out, 0) // 2 per axis: k=(5,2), s=(1,2)
    needs 2 rows and 0 columns; a square formula applied to both axes gets one of them wrong."""
    assert R.conv_transpose_crop(4, 5, 1, "same") == 2
    assert R.conv_transpose_crop(4, 2, 2, "same") == 0
    assert R.conv_transpose_crop(4, 3, 2, "same") == 0  # total 1: the odd pixel is cropped at the end
    assert R.conv_transpose_crop(4, 4, 2, "same") == 1
    y = np.random.default_rng(1).standard_normal((4, 4, 1))
    kernel = np.random.default_rng(2).standard_normal((5, 2, 1, 1))
    np.testing.assert_allclose(
        R.conv2d_transpose(y, kernel, (1, 2), "same"), _keras_conv_transpose(y, kernel, (1, 2), "same"), atol=ATOL
    )


def test_output_shape_formulas():
    assert R.conv2d_output_shape((101, 7), (3, 2), (2, 3), "same") == (51, 3)
    assert R.conv2d_output_shape((101, 7), (3, 2), (2, 3), "valid") == (50, 2)
    assert R.conv2d_transpose_output_shape((7, 5), (3, 4), 2, "same") == (14, 10)
    assert R.conv2d_transpose_output_shape((7, 5), (3, 4), 2, "valid") == (15, 12)  # (in-1)*s + k
    assert R.conv2d_transpose_output_shape((7, 5), (2, 1), 3, "valid") == (21, 15)  # k < s: in*s (Keras)


def test_overlap_pattern_and_unevenness():
    np.testing.assert_array_equal(R.overlap_pattern(3, 2), [[4, 2], [2, 1]])
    np.testing.assert_array_equal(R.overlap_pattern(4, 2), [[4, 4], [4, 4]])
    assert R.overlap_unevenness(3, 2) == pytest.approx(0.75)
    assert R.overlap_unevenness(4, 2) == 0.0
    assert R.overlap_unevenness(1, 2) == 1.0
    assert R.overlap_pattern((3, 4), 2).tolist() == [[4, 4], [2, 2]]


@pytest.mark.parametrize("k,s", [(3, 2), (4, 2), (5, 3), (2, 3), ((3, 5), (2, 3))])
def test_overlap_pattern_is_what_a_transposed_conv_of_ones_gives(k, s):
    """Ones through a ones kernel ('valid', scatter-add): the interior repeats the overlap pattern."""
    (kh, kw), (sh, sw) = R._pair(k), R._pair(s)
    out = R.conv2d_transpose(np.ones((8, 8, 1)), np.ones((kh, kw, 1, 1)), (sh, sw), "valid")[..., 0]
    r0, c0 = -(-kh // sh) * sh, -(-kw // sw) * sw  # past the border, at phase 0
    np.testing.assert_array_equal(out[r0 : r0 + sh, c0 : c0 + sw], R.overlap_pattern(k, s))


def test_bad_arguments_raise():
    with pytest.raises(ValueError, match="padding"):
        R.conv2d(np.ones((4, 4)), np.ones((2, 2)), padding="full")
    with pytest.raises(ValueError, match="method"):
        R.conv2d(np.ones((4, 4)), np.ones((2, 2)), method="fft")
    with pytest.raises(ValueError, match="channels"):
        R.conv2d(np.ones((4, 4, 2)), np.ones((2, 2, 3, 1)))
