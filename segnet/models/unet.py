"""The U-Net: encoder, one registered decoder, and a float32 logit head.

Encoder contract (DESIGN.md): :func:`encoder` returns the bottleneck, the skips ordered from highest
to lowest resolution, and — when the decoder ``needs_indices`` — the argmax of each pooling (else
``None`` per level). Level ``i`` (0-based) has ``filters * 2**i`` channels; the bottleneck has
``filters * 2**depth``. Pooling is 2x2 'SAME', so odd sizes work: 101 → 51 → 26 → 13 → 7, and each
decoder block crops back to its skip's shape.

Decoder stage ``s`` (1..depth, from the bottleneck upward) merges skip ``depth - s`` with
``filters * 2**(depth - s)`` filters; its upsampling operator is the layer ``decoder{s}_up``.
"""

from __future__ import annotations

import keras
import numpy as np

from segnet.errors import ConfigError
from segnet.models.blocks import conv_block
from segnet.models.decoders import resolve_decoder
from segnet.models.layers import MaxPoolWithArgmax


def encoder(x, *, depth: int, filters: int, residual: bool = False, dropout: float = 0.0, with_indices: bool = False):
    """``(bottleneck, skips, indices)``: skips highest resolution first; indices per level or ``None``s.

    Dropout (when > 0) follows every pooling but the first, and the bottleneck block.
    """
    skips, indices = [], []
    for level in range(depth):
        x = conv_block(x, filters * 2**level, name=f"encoder{level + 1}", residual=residual)
        skips.append(x)
        if with_indices:
            x, idx = MaxPoolWithArgmax(name=f"encoder{level + 1}_pool")(x)
        else:
            x, idx = keras.layers.MaxPooling2D(2, padding="same", name=f"encoder{level + 1}_pool")(x), None
        indices.append(idx)
        if dropout > 0 and level > 0:
            x = keras.layers.Dropout(dropout, name=f"encoder{level + 1}_dropout")(x)
    x = conv_block(x, filters * 2**depth, name="bottleneck", residual=residual)
    if dropout > 0:
        x = keras.layers.Dropout(dropout, name="bottleneck_dropout")(x)
    return x, skips, indices


def build_model(cfg) -> keras.Model:
    """A U-Net ``unet_<decoder>`` for ``cfg``: input (size, size, 1) float32 → logits (size, size, 1) float32.

    Reads ``cfg.data.size``, ``cfg.model.{decoder, depth, filters, residual, dropout}`` and ``cfg.decoder``
    (decoder options; ``None`` = default). Any object with those attributes works (e.g. SimpleNamespace).
    """
    size = int(cfg.data.size)
    m = cfg.model
    depth, filters = int(m.depth), int(m.filters)
    residual, dropout = bool(getattr(m, "residual", False)), float(getattr(m, "dropout", 0.0) or 0.0)
    if depth < 1:
        raise ConfigError(f"model.depth must be >= 1; got {depth}")
    if filters < 1:
        raise ConfigError(f"model.filters must be >= 1; got {filters}")
    if not 0.0 <= dropout < 1.0:
        raise ConfigError(f"model.dropout must be in [0, 1); got {dropout}")
    if size < 2**depth:
        raise ConfigError(f"data.size ({size}) must be >= 2**model.depth ({2**depth})")
    spec, options = resolve_decoder(m.decoder, dict(getattr(cfg, "decoder", None) or {}))
    block = spec.make_block(**options)

    inputs = keras.Input((size, size, 1), dtype="float32", name="image")
    x, skips, indices = encoder(
        inputs, depth=depth, filters=filters, residual=residual, dropout=dropout, with_indices=spec.needs_indices
    )
    for stage in range(1, depth + 1):
        level = depth - stage
        x = block(x, skips[level], filters=filters * 2**level, stage=stage, indices=indices[level], residual=residual)
    # The head stays float32 under mixed precision: logits feed the loss and the metrics.
    logits = keras.layers.Conv2D(1, 1, dtype="float32", name="logits")(x)
    return keras.Model(inputs, logits, name=f"unet_{spec.name}")


def count_params(model: keras.Model) -> int:
    """Every weight of the model, trainable and not (BatchNorm moving statistics included)."""
    return int(sum(int(np.prod(w.shape)) for w in model.weights))
