"""Building blocks shared by the encoder and every decoder: conv blocks, skip merging, the block factory.

Layer names encode where a layer sits (``encoder2_1_conv``, ``decoder3_up``, ``decoder3_concat``) so
that summaries, ``segnet shapes`` and the artifact metrics can find them.
"""

from __future__ import annotations

from collections.abc import Callable

import keras

from segnet.models.layers import FusedBatchNormalization

BatchNorm = type[keras.layers.Layer]
"""A batch-norm layer class: called as ``batch_norm(name=...)``; ``None`` means :class:`FusedBatchNormalization`."""


def conv_bn_relu(x, filters: int, name: str, kernel_size: int = 3, *, batch_norm: BatchNorm | None = None):
    """Conv (no bias: BN follows) → BatchNorm (``batch_norm``, default the fused layer) → ReLU."""
    bn = batch_norm or FusedBatchNormalization
    x = keras.layers.Conv2D(filters, kernel_size, padding="same", use_bias=False, name=f"{name}_conv")(x)
    x = bn(name=f"{name}_bn")(x)
    return keras.layers.Activation("relu", name=f"{name}_relu")(x)


def conv_block(x, filters: int, name: str, residual: bool = False, *, batch_norm: BatchNorm | None = None):
    """Two conv-BN-ReLU (U-Net); ``residual``: ``relu(shortcut + BN(conv(conv-BN-ReLU(x))))`` with a 1x1
    projection shortcut when the channels change (He et al. 2016). The last layer is ``{name}_out``.
    ``batch_norm``: the batch-norm layer class (default :class:`FusedBatchNormalization`)."""
    bn = batch_norm or FusedBatchNormalization
    if not residual:
        x = conv_bn_relu(x, filters, f"{name}_1", batch_norm=bn)
        x = keras.layers.Conv2D(filters, 3, padding="same", use_bias=False, name=f"{name}_2_conv")(x)
        x = bn(name=f"{name}_2_bn")(x)
        return keras.layers.Activation("relu", name=f"{name}_out")(x)
    shortcut = x
    if x.shape[-1] != filters:
        shortcut = keras.layers.Conv2D(filters, 1, use_bias=False, name=f"{name}_proj_conv")(x)
        shortcut = bn(name=f"{name}_proj_bn")(shortcut)
    y = conv_bn_relu(x, filters, f"{name}_1", batch_norm=bn)
    y = keras.layers.Conv2D(filters, 3, padding="same", use_bias=False, name=f"{name}_2_conv")(y)
    y = bn(name=f"{name}_2_bn")(y)
    y = keras.layers.Add(name=f"{name}_add")([shortcut, y])
    return keras.layers.Activation("relu", name=f"{name}_out")(y)


def match_spatial(x, like, name: str):
    """Crop or zero-pad ``x`` at the bottom/right to ``like``'s height and width (static shapes).

    Bottom/right because 'SAME' pooling pads there: an odd map (13) pools to 7, whose 2x (14) has one
    extra row/column at the end. Returns ``x`` unchanged when the shapes already agree.
    """
    (h, w), (th, tw) = x.shape[1:3], like.shape[1:3]
    if None in (h, w, th, tw):
        raise ValueError(f"{name}: decoder blocks need static spatial shapes; got {x.shape} and {like.shape}")
    if (h, w) == (th, tw):
        return x
    crop = ((0, max(h - th, 0)), (0, max(w - tw, 0)))
    pad = ((0, max(th - h, 0)), (0, max(tw - w, 0)))
    if any(any(p) for p in crop):
        x = keras.layers.Cropping2D(crop, name=f"{name}_crop")(x)
    if any(any(p) for p in pad):
        x = keras.layers.ZeroPadding2D(pad, name=f"{name}_pad")(x)
    return x


def merge_skip(up, skip, *, filters: int, stage: int, residual: bool = False, batch_norm: BatchNorm | None = None):
    """U-Net merge: fit ``up`` to the skip, concatenate ``[up, skip]``, two conv-BN-ReLU → ``decoder{stage}_out``."""
    up = match_spatial(up, skip, name=f"decoder{stage}")
    x = keras.layers.Concatenate(name=f"decoder{stage}_concat")([up, skip])
    return conv_block(x, filters, name=f"decoder{stage}", residual=residual, batch_norm=batch_norm)


UpFactory = Callable[..., keras.layers.Layer]


def decoder_block(make_up: UpFactory, needs_indices: bool = False) -> Callable:
    """Turn an upsampler factory into a decoder block with the registry's signature.

    ``make_up(filters=..., skip_channels=..., name=...)`` returns the ONE layer that upsamples by 2
    (named ``decoder{stage}_up``); the block calls it on ``x`` (or ``[x, indices]``) and merges the skip.
    """

    def block(x, skip, *, filters: int, stage: int, indices=None, residual: bool = False, batch_norm=None):
        up = make_up(filters=filters, skip_channels=int(skip.shape[-1]), name=f"decoder{stage}_up")
        if needs_indices:
            if indices is None:
                raise ValueError(f"decoder{stage}: this decoder needs the encoder's pooling indices")
            y = up([x, indices])
        else:
            y = up(x)
        return merge_skip(y, skip, filters=filters, stage=stage, residual=residual, batch_norm=batch_norm)

    return block
