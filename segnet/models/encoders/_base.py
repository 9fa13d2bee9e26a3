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

__all__ = ["EncoderOutput", "EncoderSpec", "EncoderWeights"]


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
class EncoderWeights:
    """How an encoder takes pretrained weights (``model.encoder_weights``: a named source or a file path).

    ``fetch(source)`` reads or downloads them now (a :class:`~segnet.errors.SegnetError` naming
    ``model.encoder_weights`` when it cannot) and returns ``apply(model)``, which copies them into the
    encoder layers of a built model and returns how many layers it filled. Fetching comes before a
    training run is created, so a failed download leaves no run behind.
    """

    filters: int  # the model.filters the weights were trained at
    sources: tuple[str, ...]  # the named sources (e.g. "imagenet"); any other value is a file path
    fetch: Callable[[str], Callable[[Any], int]]


@dataclass(frozen=True)
class EncoderSpec:
    """A registered encoder: ``build(x, *, depth, filters, ...)`` → :class:`EncoderOutput`; ``weights``:
    how it takes pretrained weights, None when it takes none."""

    name: str
    description: str
    provides_indices: bool
    build: Callable[..., EncoderOutput]
    order: int = DEFAULT_ORDER
    weights: EncoderWeights | None = None


def pooled_levels(x, *, depth: int, level: Callable, dropout: float = 0.0, with_indices: bool = False) -> EncoderOutput:
    """The level structure every pooling encoder shares: ``level(x, i)`` for i = 0..depth-1 (skip ``i``),
    each followed by a 2x2 'SAME' max pooling ``encoder{i+1}_pool`` (``MaxPoolWithArgmax`` when
    ``with_indices``), dropout after every pooling but the first (``encoder{i+1}_dropout``), then
    ``level(x, depth)`` as the bottleneck (``bottleneck_dropout``)."""
    import keras

    from segnet.models.layers import MaxPoolWithArgmax

    skips, indices, pooled = [], [], []
    for i in range(depth):
        x = level(x, i)
        skips.append(x)
        if with_indices:
            x, idx = MaxPoolWithArgmax(name=f"encoder{i + 1}_pool")(x)
        else:
            x, idx = keras.layers.MaxPooling2D(2, padding="same", name=f"encoder{i + 1}_pool")(x), None
        indices.append(idx)
        pooled.append(x)
        if dropout > 0 and i > 0:
            x = keras.layers.Dropout(dropout, name=f"encoder{i + 1}_dropout")(x)
    x = level(x, depth)
    if dropout > 0:
        x = keras.layers.Dropout(dropout, name="bottleneck_dropout")(x)
    return EncoderOutput(bottleneck=x, skips=skips, indices=indices, downsampled=pooled)
