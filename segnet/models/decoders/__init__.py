"""The decoder registry: one name → one :class:`DecoderSpec`; every decoder file registers itself.

A decoder is a way to upsample by 2 in a U-Net decoder block. ``spec.make_block(**options)`` returns
a block with one signature for all decoders (so the model builder does not care which it gets)::

    block(x, skip, *, filters, stage, indices=None, residual=False) -> tensor

It upsamples ``x`` by 2 with **one** Keras layer named ``f"decoder{stage}_up"`` (called ``up(x)``, or
``up([x, indices])`` when ``spec.needs_indices``), crops/pads the result to the skip's spatial shape,
concatenates the skip and applies two conv-BN-ReLU (``filters`` each; residual when asked).

Stages are numbered ``1..depth`` from the bottleneck upward: stage 1 upsamples the bottleneck and
merges the deepest skip; stage ``depth`` returns to full resolution. ``indices`` is the argmax of the
encoder pooling at the same level (see :mod:`segnet.models.layers` for the index convention).

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

import importlib
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from segnet.errors import ConfigError

__all__ = ["DECODERS", "DecoderSpec", "Option", "register", "resolve_decoder", "option_names"]


@dataclass(frozen=True)
class Option:
    """One decoder option: a default and either the allowed ``choices`` or a ``type``."""

    default: Any
    choices: tuple | None = None
    type: type | None = None
    help: str = ""

    def allowed(self) -> str:
        if self.choices is not None:
            return ", ".join(_show(c) for c in self.choices)
        return f"any {self.type.__name__}" if self.type is not None else "any value"

    def check(self, decoder: str, key: str, value: Any) -> Any:
        """The value, coerced from a string where unambiguous (``"4"`` → 4, ``"false"`` → False); else ConfigError."""
        value = _coerce(value, self)
        if self.choices is not None:  # 1 == True in Python: compare types too
            ok = any(value == c and type(value) is type(c) for c in self.choices)
        else:
            ok = self.type is None or (isinstance(value, self.type) and not (self.type is int and isinstance(value, bool)))
        if not ok:
            raise ConfigError(
                f"decoder.{key} must be one of {self.allowed()} for decoder '{decoder}'; got {_show(value)}"
            )
        return value


@dataclass(frozen=True)
class DecoderSpec:
    """A registered decoder. ``make_block(**options)`` → ``block(x, skip, *, filters, stage, indices=None)``."""

    name: str
    description: str
    needs_indices: bool
    supports_jit: bool
    options: dict[str, Option]
    make_block: Callable[..., Callable]
    overlap: Callable[[dict], str] = field(default=lambda options: "", repr=False)
    """Text for ``segnet shapes``: what the operator does to a constant map (the overlap pattern)."""

    def defaults(self) -> dict[str, Any]:
        return {k: o.default for k, o in self.options.items()}


DECODERS: dict[str, DecoderSpec] = {}


def register(spec: DecoderSpec) -> DecoderSpec:
    if spec.name in DECODERS:
        raise ValueError(f"decoder {spec.name!r} registered twice")
    DECODERS[spec.name] = spec
    return spec


def option_names() -> list[str]:
    """Every option any decoder takes (the keys a config's ``decoder`` section may hold)."""
    return sorted({k for spec in DECODERS.values() for k in spec.options})


def resolve_decoder(name: str, options: dict | None = None) -> tuple[DecoderSpec, dict[str, Any]]:
    """``(spec, resolved_options)`` for a decoder name and a config's ``decoder`` section.

    ``None`` values mean "use the default"; the result holds exactly the decoder's own options.
    Raises ConfigError for an unknown name (listing the valid ones), an option the decoder does not
    take, or a value it does not allow (naming ``decoder.<key>`` and the allowed values).
    """
    if name not in DECODERS:
        raise ConfigError(f"model.decoder: unknown decoder {name!r}; valid: {', '.join(sorted(DECODERS))}")
    spec = DECODERS[name]
    given = {k: v for k, v in dict(options or {}).items() if v is not None}
    foreign = sorted(k for k in given if k not in spec.options)
    if foreign:
        takes = ", ".join(spec.options) or "none"
        raise ConfigError(f"decoder '{name}' takes options: {takes} (got: {', '.join(foreign)})")
    resolved = spec.defaults()
    for key, value in given.items():
        resolved[key] = spec.options[key].check(name, key, value)
    return spec, resolved


def _show(v: Any) -> str:
    return str(v).lower() if isinstance(v, bool) else str(v)


def _coerce(value: Any, option: Option) -> Any:
    if not isinstance(value, str):
        return value
    kinds = {type(c) for c in option.choices} if option.choices is not None else {option.type}
    low = value.strip().lower()
    if bool in kinds and low in ("true", "false"):
        return low == "true"
    if int in kinds and low.lstrip("-").isdigit():
        return int(low)
    return value


# Each module registers its decoder on import; this order is the order of every listing.
for _module in ("transposed", "upsampling", "maxunpool", "bed_of_nails", "pixel_shuffle", "bilinear_additive"):
    importlib.import_module(f"{__name__}.{_module}")
