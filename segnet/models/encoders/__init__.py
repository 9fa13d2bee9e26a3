"""The encoder registry: one name → one :class:`EncoderSpec`; one file in this package = one encoder.

**Adding an encoder** = one new module here (plus its README row) defining ``SPEC = EncoderSpec(...)``;
:class:`~segnet.models.registry.Registry` finds it with :mod:`pkgutil` (no list to edit), and
``model.encoder=<name>`` selects it. Like decoders, the module imports TensorFlow/Keras only inside
``build``.

**Contract.** ``spec.build(x, *, depth, filters, residual=False, dropout=0.0, with_indices=False,
batch_norm=None)`` takes the input tensor ``x`` (B, H, W, C) and returns an :class:`EncoderOutput`:

* ``skips``: exactly ``depth`` tensors, **highest resolution first**; skip ``i`` (0-based) has spatial
  size ``ceil(H / 2**i)`` x ``ceil(W / 2**i)`` (static) and any number of channels (the ``unet``
  encoder: ``filters * 2**i``). The decoder stage ``s = depth - i`` merges skip ``i`` with
  ``filters * 2**i`` filters, cropping/padding its 2x upsampling to the skip's exact shape.
* ``bottleneck``: spatial ``ceil(H / 2**depth)`` (the ``unet`` encoder: ``filters * 2**depth`` channels).
* ``indices``: ``depth`` entries; when ``with_indices`` (the decoder ``needs_indices``, only asked of an
  encoder whose spec ``provides_indices``) entry ``i`` is the argmax of the 2x2 'SAME' max pooling of
  skip ``i``, in the :class:`~segnet.models.layers.MaxPoolWithArgmax` convention; else ``None`` each.
* ``downsampled``: per level, the tensor right after that level's downsampling (what ``segnet shapes``
  prints as "pooled"), or an empty list when the encoder has no such tensor.

Layer names are the encoder's own business, but they must be unique and must not start with
``decoder`` or be ``logits``/``image`` (the decoder's and head's names); ``batch_norm`` (a layer class
called as ``batch_norm(name=...)``, None = segnet's fused layer; ``resnet`` also passes ``epsilon``) goes
to every BN the encoder makes.

**Pretrained weights** (optional): a spec with ``weights`` (:class:`EncoderWeights`) accepts
``model.encoder_weights`` (a named source such as ``imagenet``, or a file path) at the width it names;
:func:`check_weights` enforces that at config time, :func:`fetch_weights` reads or downloads them for a new
training run (before the run exists) and returns what copies them into the built model.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from segnet.errors import ConfigError
from segnet.models.encoders._base import EncoderOutput, EncoderSpec, EncoderWeights
from segnet.models.registry import Registry

__all__ = ["ENCODERS", "EncoderOutput", "EncoderSpec", "EncoderWeights", "check_pairing", "check_weights",
           "fetch_weights", "resolve_encoder", "weights_file"]


ENCODERS: Registry = Registry("encoder", "model.encoder")


def resolve_encoder(name: str) -> EncoderSpec:
    """The spec of ``name``; ConfigError listing the valid names otherwise."""
    return ENCODERS.lookup(name)


def check_pairing(encoder: EncoderSpec, decoder) -> None:
    """ConfigError when the decoder needs pooling indices that the encoder does not provide."""
    if decoder.needs_indices and not encoder.provides_indices:
        able = ", ".join(n for n, s in ENCODERS.items() if s.provides_indices) or "none"
        raise ConfigError(
            f"model.decoder '{decoder.name}' needs the encoder's pooling indices, but model.encoder "
            f"'{encoder.name}' provides none (encoders that do: {able})"
        )


def check_weights(encoder: EncoderSpec, source: str | None, filters: int) -> None:
    """ConfigError when ``model.encoder_weights`` is set for an encoder that takes no pretrained weights, or
    with a ``model.filters`` other than the width the weights were trained at."""
    if source is None:
        return
    if encoder.weights is None:
        able = ", ".join(n for n, s in ENCODERS.items() if s.weights) or "none"
        raise ConfigError(f"config key 'model.encoder_weights' ({source!r}) needs an encoder that takes pretrained "
                          f"weights; model.encoder '{encoder.name}' takes none (encoders that do: {able})")
    if filters != encoder.weights.filters:
        raise ConfigError(f"config key 'model.encoder_weights' ({source!r}) needs model.filters="
                          f"{encoder.weights.filters}, the width the {encoder.name} weights were trained at; "
                          f"got {filters}")


def weights_file(encoder: EncoderSpec, source: str | None) -> Path | None:
    """The file or folder ``model.encoder_weights`` names; None for no weights or a named source
    (``imagenet``). ConfigError when it does not exist."""
    if source is None or encoder.weights is None or source in encoder.weights.sources:
        return None
    path = Path(source).expanduser()
    if not path.exists():
        named = ", ".join(encoder.weights.sources)
        raise ConfigError(f"config key 'model.encoder_weights': {source} does not exist (a weights file or "
                          f"folder, or one of: {named})")
    return path


def fetch_weights(cfg) -> Callable[[Any], int] | None:
    """Read or download the encoder weights ``cfg.model.encoder_weights`` names, once per training run and
    before the run is created; returns ``apply(model)`` (copies them in, returns the layers filled), or
    None when the config asks for none. A :class:`~segnet.errors.SegnetError` when they cannot be had."""
    source = getattr(cfg.model, "encoder_weights", None)
    if source is None:
        return None
    encoder = resolve_encoder(cfg.model.encoder)
    check_weights(encoder, source, int(cfg.model.filters))
    path = weights_file(encoder, source)
    return encoder.weights.fetch(source if path is None else str(path))


# Every module of this package defines SPEC; listing order: spec.order, then name.
ENCODERS.discover(__name__)
