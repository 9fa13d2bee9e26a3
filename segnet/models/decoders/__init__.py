"""The decoder registry: one name → one :class:`DecoderSpec`; one file in this package = one decoder.

**Adding a decoder** = one new module here (plus its README row). The module defines ``SPEC =
DecoderSpec(...)``; :class:`~segnet.models.registry.Registry` finds it with :mod:`pkgutil` when this
package is imported, so the CLI, config validation, ``segnet shapes``, training, the logged metrics,
variant labels, ablations and the tests that iterate :data:`DECODERS` all see it. The module must not
import TensorFlow at import time (config validation imports the registry): import it inside
``make_block``. Listing order: ``order`` (the built-ins use 10..60; default 100), then name.

A decoder is a way to upsample by 2 in a U-Net decoder block. ``spec.make_block(**options)`` returns
a block with one signature for all decoders (so the model builder does not care which it gets)::

    block(x, skip, *, filters, stage, indices=None, residual=False, batch_norm=None) -> tensor

It upsamples ``x`` by 2 with **one** Keras layer named ``f"decoder{stage}_up"`` (called ``up(x)``, or
``up([x, indices])`` when ``spec.needs_indices``), crops/pads the result to the skip's spatial shape,
concatenates the skip and applies two conv-BN-ReLU (``filters`` each; residual when asked; BN of class
``batch_norm``). :func:`segnet.models.blocks.decoder_block` does all of that from a factory of the
``decoder{stage}_up`` layer.

Stages are numbered ``1..depth`` from the bottleneck upward: stage 1 upsamples the bottleneck and
merges the deepest skip; stage ``depth`` returns to full resolution. ``indices`` is the argmax of the
encoder pooling at the same level (see :mod:`segnet.models.layers` for the index convention); a decoder
that ``needs_indices`` only works with an encoder that ``provides_indices`` (checked at config time).

Overlap: ``spec.overlap_taps(options)`` is the 2x2 grid of kernel taps reaching each output pixel of
the ``decoder{stage}_up`` layer; :func:`segnet.metrics.artifacts.overlap_unevenness` defines the metric
from it. ``spec.unevenness(options)`` is what training logs as ``artifact_overlap_unevenness`` and
``spec.overlap(options)`` what ``segnet shapes`` prints: both from that one grid.

Variant labels (``Config.variant()``, MLflow run names, ablations): the decoder name, then each option
in name order as ``<label><value>`` (``Option.label``, default the option's name; ``""``: the value
alone), booleans as ``<label>`` / ``no<label>``: ``transposed_k3``, ``upsampling_bilinear``,
``pixel_shuffle_icnr``, ``bilinear_additive_g4``.

Options: ``resolve_decoder(name, options)`` validates a config's ``decoder`` section. A value of
``None`` means "the decoder's default"; any other value must be an option the decoder takes, with an
allowed value.

=================  =====================================================  =======================
name               upsampling operator (``decoder{stage}_up``)            options (default)
=================  =====================================================  =======================
transposed         Conv2DTranspose, stride 2, 'same'                      kernel_size 3 | 4 (3)
upsampling         nearest/bilinear resize, then conv 3x3                 interpolation (nearest)
maxunpool          conv 1x1 to the skip's channels, then SegNet unpooling  —
bed_of_nails       zero insertion (top-left of each 2x2), then conv 3x3   —
pixel_shuffle      conv 3x3 to 4·filters, then depth_to_space(2)          icnr true | false (true)
bilinear_additive  bilinear resize, sum of ``groups`` consecutive          groups 1 | 2 | 4 | 8 (4)
                   channels, then conv 3x3
=================  =====================================================  =======================
"""

from __future__ import annotations

from typing import Any

from segnet.errors import ConfigError
from segnet.models.decoders._base import DecoderSpec, Option, even_taps, transposed_taps
from segnet.models.registry import Registry

__all__ = ["DECODERS", "DecoderSpec", "Option", "register", "resolve_decoder", "option_names", "even_taps",
           "transposed_taps"]


DECODERS: Registry = Registry("decoder", "model.decoder")


def register(spec: DecoderSpec) -> DecoderSpec:
    """Register a decoder defined outside this package (files here are discovered, not registered by hand)."""
    return DECODERS.register(spec)


def option_names() -> list[str]:
    """Every option any decoder takes (the keys a config's ``decoder`` section may hold)."""
    return sorted({k for spec in DECODERS.values() for k in spec.options})


def resolve_decoder(name: str, options: dict | None = None) -> tuple[DecoderSpec, dict[str, Any]]:
    """``(spec, resolved_options)`` for a decoder name and a config's ``decoder`` section.

    ``None`` values mean "use the default"; the result holds exactly the decoder's own options.
    Raises ConfigError for an unknown name (listing the valid ones), an option the decoder does not
    take, or a value it does not allow (naming ``decoder.<key>`` and the allowed values).
    """
    spec = DECODERS.lookup(name)
    given = {k: v for k, v in dict(options or {}).items() if v is not None}
    foreign = sorted(k for k in given if k not in spec.options)
    if foreign:
        takes = ", ".join(spec.options) or "none"
        raise ConfigError(f"decoder '{name}' takes options: {takes} (got: {', '.join(foreign)})")
    resolved = spec.defaults()
    for key, value in given.items():
        resolved[key] = spec.options[key].check(name, key, value)
    return spec, resolved


# Every module of this package defines SPEC; listing order: spec.order, then name.
DECODERS.discover(__name__)
