"""Custom Keras layers: the upsampling operators Keras does not have, and the pooling that feeds one.

Two kinds live here:

* **operators** without weights — :class:`MaxPoolWithArgmax`, :class:`MaxUnpool2D`, :class:`BedOfNails2D`,
  :class:`PixelShuffle2D`, :class:`ChannelGroupSum`;
* :class:`FusedBatchNormalization` — Keras' BatchNormalization on TF's fused kernel (same weights);
* :class:`EmptyGate` — the empty-mask gate of deep supervision (:mod:`segnet.models.heads`);
* **upsamplers** — one layer per decoder holding its whole upsampling operator (resize or unpool *and*
  its convolution), so that the model has exactly one ``decoder{stage}_up`` layer per stage that the
  artifact metrics can feed a constant map: :class:`ResizeConv2D`, :class:`BilinearAdditiveConv2D`,
  :class:`BedOfNailsConv2D`, :class:`SubPixelConv2D`, :class:`UnpoolConv2D`.

Every layer stores its ``__init__`` arguments and returns them from ``get_config()``, and is registered
under the ``segnet`` package, so ``keras.models.load_model`` needs no ``custom_objects`` once
``segnet.models`` is imported. Layers whose ops XLA cannot compile set ``supports_jit = False``.

Argmax convention (shared by :class:`MaxPoolWithArgmax` and :class:`MaxUnpool2D`): indices are flat
positions ``(y * 2w + x) * C + c`` in the *2x grid* of the pooled map ``(2h, 2w, C)``, per image. For an
even input this is exactly ``tf.nn.max_pool_with_argmax(..., include_batch_in_index=False)``; for an odd
input (101 → 51) the grid is the input padded by one row/column at the bottom/right, which is where
'SAME' pooling pads, so unpooling to 2x and cropping the bottom/right puts every value back in place.
Indices that include the batch offset (``include_batch_in_index=True``) are accepted too (taken modulo
the per-image size).
"""

from __future__ import annotations

import keras
import tensorflow as tf

_PACKAGE = "segnet"
INTERPOLATIONS = ("nearest", "bilinear")


def _dim(x, axis: int):
    """Static size of ``axis`` when known, else the dynamic one."""
    d = x.shape[axis]
    return d if d is not None else tf.shape(x)[axis]


def _twice(d):
    return None if d is None else 2 * d


# ----------------------------------------------------------------------------- functional forms


def max_unpool(x, indices):
    """Put ``x`` (B, h, w, C) back at ``indices`` in a zero (B, 2h, 2w, C) map (see the module docstring).

    Dense, scatter-free: each index's offset inside its 2x2 cell (``2 * (row % 2) + col % 2``) selects one
    of four masked copies of ``x``; ``depth_to_space`` interleaves them into the 2x grid. Same result as
    scattering (each cell holds exactly one argmax), with a dense gradient instead of a gather.
    """
    w, c = _dim(x, 2), _dim(x, 3)
    per_image = tf.cast(4 * _dim(x, 1) * w * c, tf.int64)
    pos = tf.math.floordiv(tf.math.floormod(tf.cast(indices, tf.int64), per_image), tf.cast(c, tf.int64))
    pos = tf.cast(pos, tf.int32)  # y * 2w + x: small enough per image
    off = tf.math.floormod(tf.math.floordiv(pos, 2 * w), 2) * 2 + tf.math.floormod(pos, 2)  # 0..3 in the cell
    parts = [x * tf.cast(tf.equal(off, k), x.dtype) for k in range(4)]
    return tf.nn.depth_to_space(tf.concat(parts, axis=-1), 2)


def max_unpool_scatter(x, indices):
    """Reference :func:`max_unpool` by ``tf.scatter_nd`` (slower; kept for tests and comparison)."""
    b = tf.shape(x)[0]
    h, w, c = _dim(x, 1), _dim(x, 2), _dim(x, 3)
    b64, n = tf.cast(b, tf.int64), tf.cast(4 * h * w * c, tf.int64)
    flat_i = tf.reshape(tf.math.floormod(tf.cast(indices, tf.int64), n), tf.stack([b64, -1]))
    flat_x = tf.reshape(x, tf.stack([b, -1]))
    batch = tf.broadcast_to(tf.range(b64)[:, None], tf.shape(flat_i, out_type=tf.int64))
    out = tf.scatter_nd(tf.stack([batch, flat_i], axis=-1), flat_x, tf.stack([b64, n]))
    static = all(isinstance(d, int) for d in (h, w, c))
    return tf.reshape(out, [-1, 2 * h, 2 * w, c] if static else tf.stack([b, 2 * h, 2 * w, c]))


def resize2x(x, interpolation: str = "nearest"):
    """2x resize (TF's half-pixel convention, as ``UpSampling2D``), keeping the dtype.

    Nearest is each value copied to its 2x2 cell (``depth_to_space`` of four copies): the values of
    ``tf.image.resize``, with a gradient XLA compiles. ``tf.image.resize``'s (``ResizeNearestNeighborGrad``)
    has no XLA kernel on the CPU in TensorFlow 2.21, and Keras compiles a model with XLA on a GPU when all
    its layers ``supports_jit``, as the upsampling decoder's do.
    """
    if interpolation == "nearest":
        return tf.nn.depth_to_space(tf.concat([x, x, x, x], axis=-1), 2)
    size = tf.stack([2 * _dim(x, 1), 2 * _dim(x, 2)]) if x.shape[1] is None or x.shape[2] is None else (
        2 * x.shape[1], 2 * x.shape[2])
    return tf.cast(tf.image.resize(x, size, method=interpolation), x.dtype)


def bed_of_nails(x):
    """Each value at the top-left of its 2x2 cell, zeros elsewhere: (B, h, w, C) → (B, 2h, 2w, C).

    ``depth_to_space`` sends channel block ``i*2 + j`` to sub-pixel ``(i, j)``; block 0 is ``x``, the rest zeros.
    """
    return tf.nn.depth_to_space(tf.concat([x, tf.zeros_like(x), tf.zeros_like(x), tf.zeros_like(x)], axis=-1), 2)


def pixel_shuffle(x, block_size: int = 2):
    """Sub-pixel rearrangement (B, h, w, r²C) → (B, rh, rw, C): channel ``(i*r + j)*C + c`` → pixel offset (i, j)."""
    return tf.nn.depth_to_space(x, block_size)


def channel_group_sum(x, groups: int):
    """Sum each run of ``groups`` consecutive channels: (B, H, W, C) → (B, H, W, C / groups)."""
    c = x.shape[-1]
    if c is None or c % groups:
        raise ValueError(f"channel_group_sum: {c} channels are not divisible by groups={groups}")
    shape = tf.concat([tf.shape(x)[:-1], [c // groups, groups]], axis=0)
    y = tf.reduce_sum(tf.reshape(x, shape), axis=-1)
    return tf.ensure_shape(y, [*x.shape[:-1], c // groups])


# ----------------------------------------------------------------------------- operators


@keras.saving.register_keras_serializable(package=_PACKAGE)
class MaxPoolWithArgmax(keras.layers.Layer):
    """2x2 max pooling, stride 2, 'SAME' padding, returning ``[pooled, argmax]`` (argmax int64, 2x-grid indices).

    Wraps ``tf.nn.max_pool_with_argmax``; XLA has no kernel for it (``supports_jit = False``).
    """

    def __init__(self, pool_size: int = 2, **kwargs):
        super().__init__(**kwargs)
        if pool_size != 2:
            raise ValueError(f"MaxPoolWithArgmax supports pool_size=2 only; got {pool_size}")
        self.pool_size = pool_size
        self.supports_jit = False

    def call(self, x):
        pooled, argmax = tf.nn.max_pool_with_argmax(
            x, ksize=2, strides=2, padding="SAME", include_batch_in_index=False
        )
        h, w, c = _dim(x, 1), _dim(x, 2), _dim(x, 3)
        wp = _dim(pooled, 2)
        argmax = tf.math.floormod(argmax, tf.cast(h * w * c, tf.int64))  # some kernels add the batch offset
        if isinstance(w, int) and isinstance(wp, int) and w == 2 * wp:
            return [pooled, argmax]
        c64, w64 = tf.cast(c, tf.int64), tf.cast(w, tf.int64)
        ch, pos = tf.math.floormod(argmax, c64), tf.math.floordiv(argmax, c64)
        y, xx = tf.math.floordiv(pos, w64), tf.math.floormod(pos, w64)
        return [pooled, (y * tf.cast(2 * wp, tf.int64) + xx) * c64 + ch]

    def compute_output_spec(self, x):
        b, h, w, c = x.shape
        shape = (b, None if h is None else -(-h // 2), None if w is None else -(-w // 2), c)
        return [keras.KerasTensor(shape, dtype=self.compute_dtype), keras.KerasTensor(shape, dtype="int64")]

    def get_config(self):
        return {**super().get_config(), "pool_size": self.pool_size}


@keras.saving.register_keras_serializable(package=_PACKAGE)
class MaxUnpool2D(keras.layers.Layer):
    """SegNet max-unpooling: ``[x, argmax]`` → (B, 2h, 2w, C), each value back at its argmax, zeros elsewhere.

    ``argmax`` comes from :class:`MaxPoolWithArgmax` on a map with the same channels as ``x``. The output
    is the 2x grid; crop it to the pooled-from shape (odd sizes lose the last row/column, which 'SAME'
    pooling padded). Dense ops (see :func:`max_unpool`); marked ``supports_jit = False`` with the pooling
    it undoes.
    """

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.supports_jit = False

    def call(self, inputs):
        x, indices = inputs
        return max_unpool(x, indices)

    def compute_output_shape(self, input_shape):
        b, h, w, c = input_shape[0]
        return (b, _twice(h), _twice(w), c)


@keras.saving.register_keras_serializable(package=_PACKAGE)
class BedOfNails2D(keras.layers.Layer):
    """Zero insertion: each value at the top-left of its 2x2 output cell, zeros at the other three."""

    def call(self, x):
        return bed_of_nails(x)

    def compute_output_shape(self, input_shape):
        b, h, w, c = input_shape
        return (b, _twice(h), _twice(w), c)


@keras.saving.register_keras_serializable(package=_PACKAGE)
class PixelShuffle2D(keras.layers.Layer):
    """``depth_to_space``: (B, h, w, r²C) → (B, rh, rw, C)."""

    def __init__(self, block_size: int = 2, **kwargs):
        super().__init__(**kwargs)
        self.block_size = block_size

    def call(self, x):
        return pixel_shuffle(x, self.block_size)

    def compute_output_shape(self, input_shape):
        b, h, w, c = input_shape
        r = self.block_size
        return (b, None if h is None else r * h, None if w is None else r * w, c // (r * r))

    def get_config(self):
        return {**super().get_config(), "block_size": self.block_size}


@keras.saving.register_keras_serializable(package=_PACKAGE)
class ChannelGroupSum(keras.layers.Layer):
    """Sum every ``groups`` consecutive channels (the "additive" half of bilinear additive upsampling)."""

    def __init__(self, groups: int = 4, **kwargs):
        super().__init__(**kwargs)
        self.groups = groups

    def call(self, x):
        return channel_group_sum(x, self.groups)

    def compute_output_shape(self, input_shape):
        return (*input_shape[:-1], input_shape[-1] // self.groups)

    def get_config(self):
        return {**super().get_config(), "groups": self.groups}


# ----------------------------------------------------------------------------- heads


@keras.saving.register_keras_serializable(package=_PACKAGE)
class EmptyGate(keras.layers.Layer):
    """``[mask logits (B,H,W,1), salt logit (B,1)]`` → the mask logits, or ``EMPTY_LOGIT`` everywhere for an
    image whose salt probability is below ``threshold`` (a non-trainable weight: tuned after training,
    saved with the model). See :mod:`segnet.models.heads`."""

    EMPTY_LOGIT = -30.0  # sigmoid ~ 1e-13: below any binarisation threshold

    def __init__(self, threshold: float = 0.5, **kwargs):
        super().__init__(**kwargs)
        self.initial_threshold = float(threshold)

    def build(self, input_shape):
        self.threshold = self.add_weight(name="threshold", shape=(), trainable=False,
                                         initializer=keras.initializers.Constant(self.initial_threshold))

    def call(self, inputs):
        logits, salt = inputs
        keep = tf.sigmoid(tf.cast(salt, tf.float32)) >= tf.cast(self.threshold, tf.float32)  # (B, 1)
        keep = tf.reshape(keep, [-1, 1, 1, 1])
        return tf.where(keep, logits, tf.cast(self.EMPTY_LOGIT, logits.dtype))

    def compute_output_shape(self, input_shape):
        return input_shape[0]

    def get_config(self):
        return {**super().get_config(), "threshold": self.initial_threshold}


# ----------------------------------------------------------------------------- normalization


@keras.saving.register_keras_serializable(package=_PACKAGE)
class FusedBatchNormalization(keras.layers.BatchNormalization):
    """``keras.layers.BatchNormalization`` running TF's fused kernel (``FusedBatchNormV3``) on 4-D NHWC inputs.

    Keras 3 builds BN from separate moment ops, a third of a CPU training step here; the fused kernel does
    the same maths in one pass. Same weights, config and moving-statistic update (``assign`` with
    ``momentum``, the biased batch variance as Keras uses), so checkpoints are interchangeable. Computes in
    float32 like Keras (mixed precision casts back to the compute dtype). Anything else — other ranks or
    axes, masks, renorm, synchronized BN — falls back to the parent's ``call``.
    """

    def _fusable(self, inputs, mask) -> bool:
        return (
            len(inputs.shape) == 4
            and self.axis in (-1, 3)
            and mask is None
            and not self.renorm
            and not getattr(self, "synchronized", False)
        )

    def call(self, inputs, training=None, mask=None):
        if not self._fusable(inputs, mask):
            return super().call(inputs, training=training, mask=mask)
        x = tf.cast(inputs, tf.float32)
        c = x.shape[-1]
        gamma = tf.cast(self.gamma, tf.float32) if self.scale else tf.ones([c], tf.float32)
        beta = tf.cast(self.beta, tf.float32) if self.center else tf.zeros([c], tf.float32)
        if training and self.trainable:
            y, mean, var = tf.compat.v1.nn.fused_batch_norm(x, gamma, beta, epsilon=self.epsilon, is_training=True)
            # The kernel returns the Bessel-corrected variance; Keras tracks the biased one.
            n = tf.cast(tf.reduce_prod(tf.shape(x)[:-1]), tf.float32)
            var = var * ((n - 1.0) / tf.maximum(n, 1.0))
            m = self.momentum
            self.moving_mean.assign(tf.cast(self.moving_mean, tf.float32) * m + mean * (1.0 - m))
            self.moving_variance.assign(tf.cast(self.moving_variance, tf.float32) * m + var * (1.0 - m))
        else:
            y, _, _ = tf.compat.v1.nn.fused_batch_norm(
                x,
                gamma,
                beta,
                mean=tf.cast(self.moving_mean, tf.float32),
                variance=tf.cast(self.moving_variance, tf.float32),
                epsilon=self.epsilon,
                is_training=False,
            )
        return tf.cast(y, self.compute_dtype)


# ----------------------------------------------------------------------------- initializers


@keras.saving.register_keras_serializable(package=_PACKAGE)
class ICNR(keras.initializers.Initializer):
    """ICNR (Aitken et al. 2017, "Checkerboard artifact free sub-pixel convolution").

    For a kernel ``(kh, kw, cin, r²·C)`` feeding ``depth_to_space(r)``, draw one ``(kh, kw, cin, C)`` kernel
    and repeat it for each of the r² sub-pixel positions (channel ``(i*r + j)*C + c`` gets kernel ``c``).
    At initialisation the sub-pixel conv is then a conv followed by nearest upsampling: a constant input
    gives a constant output (away from the borders).
    """

    def __init__(self, scale: int = 2, initializer="glorot_uniform"):
        self.scale = scale
        self.initializer = keras.initializers.get(initializer)

    def __call__(self, shape, dtype=None):
        r2 = self.scale * self.scale
        if shape[-1] % r2:
            raise ValueError(f"ICNR: {shape[-1]} output channels are not divisible by scale²={r2}")
        sub = self.initializer((*shape[:-1], shape[-1] // r2), dtype=dtype)
        return keras.ops.tile(sub, (1,) * (len(shape) - 1) + (r2,))

    def get_config(self):
        return {"scale": self.scale, "initializer": keras.initializers.serialize(self.initializer)}

    @classmethod
    def from_config(cls, config):
        config = dict(config)
        config["initializer"] = keras.initializers.deserialize(config["initializer"])
        return cls(**config)


# ----------------------------------------------------------------------------- upsamplers (one per decoder)


class _UpsampleThenConv(keras.layers.Layer):
    """Base of the upsamplers: a weight-free 2x operator, then a ``kernel_size`` conv to ``filters``."""

    def __init__(self, filters: int, kernel_size: int = 3, **kwargs):
        super().__init__(**kwargs)
        self.filters = int(filters)
        self.kernel_size = int(kernel_size)
        self.conv = keras.layers.Conv2D(
            self.filters, self.kernel_size, padding="same", dtype=self.dtype_policy, name="conv"
        )

    def upsample(self, x):
        raise NotImplementedError

    def upsampled_channels(self, channels: int) -> int:
        return channels

    def build(self, input_shape):
        b, h, w, c = input_shape
        self.conv.build((b, _twice(h), _twice(w), self.upsampled_channels(c)))

    def call(self, x):
        return self.conv(self.upsample(x))

    def compute_output_shape(self, input_shape):
        b, h, w, _ = input_shape
        return (b, _twice(h), _twice(w), self.filters)

    def get_config(self):
        return {**super().get_config(), "filters": self.filters, "kernel_size": self.kernel_size}


@keras.saving.register_keras_serializable(package=_PACKAGE)
class ResizeConv2D(_UpsampleThenConv):
    """Resize-convolution (Odena et al. 2016): 2x nearest or bilinear resize, then a conv."""

    def __init__(self, filters: int, kernel_size: int = 3, interpolation: str = "nearest", **kwargs):
        if interpolation not in INTERPOLATIONS:
            raise ValueError(f"interpolation must be one of {', '.join(INTERPOLATIONS)}; got {interpolation!r}")
        super().__init__(filters, kernel_size, **kwargs)
        self.interpolation = interpolation

    def upsample(self, x):
        return resize2x(x, self.interpolation)

    def get_config(self):
        return {**super().get_config(), "interpolation": self.interpolation}


@keras.saving.register_keras_serializable(package=_PACKAGE)
class BilinearAdditiveConv2D(_UpsampleThenConv):
    """Bilinear additive upsampling (Wojna et al. 2019): 2x bilinear resize, sum each run of ``groups``
    consecutive channels (C → C/groups, so the number of values stays the same for groups=4), then a conv."""

    def __init__(self, filters: int, kernel_size: int = 3, groups: int = 4, **kwargs):
        super().__init__(filters, kernel_size, **kwargs)
        self.groups = int(groups)

    def upsampled_channels(self, channels: int) -> int:
        if channels % self.groups:
            raise ValueError(f"{self.name}: {channels} input channels are not divisible by groups={self.groups}")
        return channels // self.groups

    def upsample(self, x):
        return channel_group_sum(resize2x(x, "bilinear"), self.groups)

    def get_config(self):
        return {**super().get_config(), "groups": self.groups}


@keras.saving.register_keras_serializable(package=_PACKAGE)
class BedOfNailsConv2D(_UpsampleThenConv):
    """Zero insertion at the top-left of each 2x2 cell, then a conv (a transposed conv in disguise)."""

    def upsample(self, x):
        return bed_of_nails(x)


@keras.saving.register_keras_serializable(package=_PACKAGE)
class SubPixelConv2D(keras.layers.Layer):
    """Sub-pixel convolution (Shi et al. 2016): a conv to 4·filters channels, then ``depth_to_space(2)``.

    ``icnr=True`` initialises the conv with :class:`ICNR`, so that at initialisation a constant input
    gives a constant output; ``icnr=False`` uses Glorot-uniform (four independent sub-kernels).
    """

    def __init__(self, filters: int, kernel_size: int = 3, icnr: bool = True, **kwargs):
        super().__init__(**kwargs)
        self.filters, self.kernel_size, self.icnr = int(filters), int(kernel_size), bool(icnr)
        self.conv = keras.layers.Conv2D(
            4 * self.filters,
            self.kernel_size,
            padding="same",
            kernel_initializer=ICNR(2) if self.icnr else "glorot_uniform",
            dtype=self.dtype_policy,
            name="conv",
        )

    def build(self, input_shape):
        self.conv.build(input_shape)

    def call(self, x):
        return pixel_shuffle(self.conv(x), 2)

    def compute_output_shape(self, input_shape):
        b, h, w, _ = input_shape
        return (b, _twice(h), _twice(w), self.filters)

    def get_config(self):
        return {**super().get_config(), "filters": self.filters, "kernel_size": self.kernel_size, "icnr": self.icnr}


@keras.saving.register_keras_serializable(package=_PACKAGE)
class UnpoolConv2D(keras.layers.Layer):
    """SegNet upsampler for a U-Net: ``[x, argmax]`` → a ``kernel_size`` conv maps x to ``channels`` (the
    channels of the encoder map the argmax was recorded on), then :func:`max_unpool` to the 2x grid.

    The projection is needed because a U-Net decoder block receives the previous block's output
    (2x the skip's channels), while the indices address the skip-level feature map.
    """

    def __init__(self, channels: int, kernel_size: int = 1, **kwargs):
        super().__init__(**kwargs)
        self.channels, self.kernel_size = int(channels), int(kernel_size)
        self.supports_jit = False
        self.conv = keras.layers.Conv2D(
            self.channels, self.kernel_size, padding="same", dtype=self.dtype_policy, name="conv"
        )

    def build(self, input_shape):
        self.conv.build(input_shape[0])

    def call(self, inputs):
        x, indices = inputs
        return max_unpool(self.conv(x), indices)

    def compute_output_shape(self, input_shape):
        b, h, w, _ = input_shape[0]
        return (b, _twice(h), _twice(w), self.channels)

    def get_config(self):
        return {**super().get_config(), "channels": self.channels, "kernel_size": self.kernel_size}


CUSTOM_OBJECTS = {
    cls.__name__: cls
    for cls in (
        MaxPoolWithArgmax,
        MaxUnpool2D,
        BedOfNails2D,
        PixelShuffle2D,
        ChannelGroupSum,
        EmptyGate,
        FusedBatchNormalization,
        ICNR,
        ResizeConv2D,
        BilinearAdditiveConv2D,
        BedOfNailsConv2D,
        SubPixelConv2D,
        UnpoolConv2D,
    )
}

