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
called as ``batch_norm(name=...)``, None = segnet's fused layer) goes to every BN the encoder makes.
"""

from __future__ import annotations

from segnet.errors import ConfigError
from segnet.models.encoders._base import EncoderOutput, EncoderSpec
from segnet.models.registry import Registry

__all__ = ["ENCODERS", "EncoderOutput", "EncoderSpec", "check_pairing", "resolve_encoder"]


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


# Every module of this package defines SPEC; listing order: spec.order, then name.
ENCODERS.discover(__name__)
