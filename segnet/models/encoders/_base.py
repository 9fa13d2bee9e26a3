"""The encoder spec and its output (``EncoderSpec``, ``EncoderOutput``): what an encoder module declares.

Encoder modules import from here, not from the package ``__init__``, which discovers (imports) them,
so the registry and its entries import each other in one direction only. The contract is in the
package docstring (``segnet.models.encoders``).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from segnet.models.registry import DEFAULT_ORDER

__all__ = ["EncoderOutput", "EncoderSpec"]


@dataclass(frozen=True)
class EncoderOutput:
    """What an encoder returns (see the module docstring for the shapes)."""

    bottleneck: Any
    skips: list
    indices: list
    downsampled: list = field(default_factory=list)

    def __iter__(self):
        """``bottleneck, skips, indices = output``: the functional form's 3-tuple."""
        return iter((self.bottleneck, self.skips, self.indices))


@dataclass(frozen=True)
class EncoderSpec:
    """A registered encoder: ``build(x, *, depth, filters, ...)`` → :class:`EncoderOutput`."""

    name: str
    description: str
    provides_indices: bool
    build: Callable[..., EncoderOutput]
    order: int = DEFAULT_ORDER
