"""The U-Net: one registered encoder, one registered decoder, and a float32 logit head.

Encoder contract: :mod:`segnet.models.encoders` (the bottleneck, the skips ordered from highest to
lowest resolution, and — when the decoder ``needs_indices`` — the argmax of each pooling, else ``None``
per level). The default ``unet`` encoder: level ``i`` (0-based) has ``filters * 2**i`` channels, the
bottleneck ``filters * 2**depth``; pooling is 2x2 'SAME', so odd sizes work: 101 → 51 → 26 → 13 → 7,
and each decoder block crops back to its skip's shape.

Decoder stage ``s`` (1..depth, from the bottleneck upward) merges skip ``depth - s`` with
``filters * 2**(depth - s)`` filters; its upsampling operator is the layer ``decoder{s}_up``
(contract: :mod:`segnet.models.decoders`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import keras
import numpy as np

from segnet.errors import ConfigError
from segnet.models import heads
from segnet.models.decoders import DecoderSpec, resolve_decoder
from segnet.models.encoders import EncoderOutput, EncoderSpec, check_pairing, resolve_encoder
from segnet.models.encoders import unet as _unet_encoder

DEFAULT_ENCODER = "unet"


@dataclass(frozen=True)
class UNet:
    """A built model with what it was built from: the specs, the decoder options, the encoder's output."""

    model: keras.Model
    encoder: EncoderSpec
    decoder: DecoderSpec
    options: dict[str, Any]
    features: EncoderOutput


def encoder(x, *, depth: int, filters: int, residual: bool = False, dropout: float = 0.0, with_indices: bool = False,
            batch_norm=None) -> tuple:
    """The ``unet`` encoder as a function: ``(bottleneck, skips, indices)``, skips highest resolution
    first, indices per level or ``None``s. Dropout (when > 0) follows every pooling but the first, and the
    bottleneck block."""
    return tuple(_unet_encoder.build(x, depth=depth, filters=filters, residual=residual, dropout=dropout,
                                     with_indices=with_indices, batch_norm=batch_norm))


def _switch(cfg, key: str) -> bool:
    """A boolean ``model.<key>`` (absent: off, for config-like objects without it)."""
    return bool(getattr(cfg.model, key, False))


def _checked(cfg) -> tuple[int, int, int, bool, float]:
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
    return size, depth, filters, residual, dropout


def assemble(cfg, *, batch_norm=None) -> UNet:
    """:func:`build_model` with its parts: the specs, the resolved decoder options, the encoder's output
    (``segnet shapes`` reads the encoder's stages from it)."""
    size, depth, filters, residual, dropout = _checked(cfg)
    spec, options = resolve_decoder(cfg.model.decoder, dict(getattr(cfg, "decoder", None) or {}))
    enc = resolve_encoder(getattr(cfg.model, "encoder", None) or DEFAULT_ENCODER)
    check_pairing(enc, spec)
    block = spec.make_block(**options)

    inputs = keras.Input((size, size, 1), dtype="float32", name="image")
    features = enc.build(inputs, depth=depth, filters=filters, residual=residual, dropout=dropout,
                         with_indices=spec.needs_indices, batch_norm=batch_norm)
    if len(features.skips) != depth or len(features.indices) != depth:
        raise ValueError(f"encoder {enc.name!r} returned {len(features.skips)} skips for depth {depth}")
    x, stages = features.bottleneck, []
    for stage in range(1, depth + 1):
        level = depth - stage
        x = block(x, features.skips[level], filters=filters * 2**level, stage=stage, indices=features.indices[level],
                  residual=residual, batch_norm=batch_norm)
        if _switch(cfg, "scse"):
            x = heads.scse(x, name=f"decoder{stage}_scse")
        stages.append(x)
    if _switch(cfg, "hypercolumn"):
        x = heads.hypercolumn(stages, size)
    # The head stays float32 under mixed precision: logits feed the loss and the metrics.
    if _switch(cfg, "deep_supervision"):
        outputs = heads.supervised_outputs(heads.logit_conv(x, heads.MASK_OUTPUT), stages, features.bottleneck, size)
    else:
        outputs = heads.logit_conv(x, "logits")
    model = keras.Model(inputs, outputs, name=f"{enc.name}_{spec.name}")
    return UNet(model=model, encoder=enc, decoder=spec, options=options, features=features)


def build_model(cfg, *, batch_norm=None) -> keras.Model:
    """A U-Net ``<encoder>_<decoder>`` (``unet_transposed``) for ``cfg``: input (size, size, 1) float32 →
    logits (size, size, 1) float32.

    Reads ``cfg.data.size``, ``cfg.model.{encoder, decoder, depth, filters, residual, dropout, scse,
    hypercolumn, deep_supervision}`` (:mod:`segnet.models.heads`; deep supervision makes the outputs a
    dict whose ``logits`` entry is the gated mask) and
    ``cfg.decoder`` (decoder options; ``None`` = default). Any object with those attributes works (e.g.
    SimpleNamespace; no ``model.encoder``: ``unet``).
    ``batch_norm``: the batch-norm layer class of every conv block, called as ``batch_norm(name=...)``
    (default ``None`` = :class:`~segnet.models.layers.FusedBatchNormalization`; e.g.
    ``keras.layers.BatchNormalization`` for the benchmark's lever). Same layer names either way.
    """
    return assemble(cfg, batch_norm=batch_norm).model


def count_params(model: keras.Model) -> int:
    """Every weight of the model, trainable and not (BatchNorm moving statistics included)."""
    return int(sum(int(np.prod(w.shape)) for w in model.weights))
