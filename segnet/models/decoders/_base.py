"""The decoder spec and its parts (``Option``, tap grids): what a decoder module declares as ``SPEC``.

Decoder modules import from here, not from the package ``__init__``, which discovers (imports) them:
so the registry and its entries import each other in one direction only. The contract is in the
package docstring (``segnet.models.decoders``).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from segnet.errors import ConfigError
from segnet.models.registry import DEFAULT_ORDER

__all__ = ["DecoderSpec", "Option", "even_taps", "transposed_taps"]


@dataclass(frozen=True)
class Option:
    """One decoder option: a default and either the allowed ``choices`` or a ``type``."""

    default: Any
    choices: tuple | None = None
    type: type | None = None
    help: str = ""
    label: str | None = None
    """Abbreviation in variant labels (``"k"`` → ``transposed_k3``; ``""``: the value alone); None: the name."""

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
    """A registered decoder. ``make_block(**options)`` → ``block(x, skip, *, filters, stage, indices=None, ...)``.

    ``overlap_taps(options)``: 2x2 int grid, the kernel taps reaching each output pixel of one period of
    the ``decoder{stage}_up`` layer (see :func:`segnet.metrics.artifacts.overlap_unevenness`);
    ``overlap_note(options)``: one line on what the operator does to a constant map.
    """

    name: str
    description: str
    needs_indices: bool
    supports_jit: bool
    options: dict[str, Option]
    make_block: Callable[..., Callable]
    overlap_taps: Callable[[dict], Any]
    overlap_note: Callable[[dict], str]
    order: int = DEFAULT_ORDER

    def defaults(self) -> dict[str, Any]:
        return {k: o.default for k, o in self.options.items()}

    def taps(self, options: dict) -> np.ndarray:
        """The 2x2 tap grid for resolved ``options`` (ints)."""
        return np.asarray(self.overlap_taps(options), dtype=int)

    def unevenness(self, options: dict) -> float:
        """The logged ``artifact_overlap_unevenness`` for resolved ``options``."""
        from segnet.metrics.artifacts import overlap_unevenness

        return overlap_unevenness(self.taps(options))

    def overlap(self, options: dict) -> str:
        """What ``segnet shapes`` prints: the note, the tap grid and the unevenness (from the same grid)."""
        rows = "\n".join("    " + " ".join(f"{v:2d}" for v in row) for row in self.taps(options))
        return (
            f"{self.overlap_note(options)}\n  kernel taps reaching each output pixel over one 2x2 period:\n{rows}\n"
            f"  unevenness (max-min)/max = {self.unevenness(options):.2f}"
        )

    def label(self, options: dict) -> str:
        """The variant label: ``transposed_k3``, ``upsampling_bilinear``, ``pixel_shuffle_icnr``..."""
        parts = [self.name]
        for key, value in sorted(options.items()):
            opt = self.options[key]
            short = key if opt.label is None else opt.label
            parts.append((short if value else f"no{short}") if isinstance(value, bool) else f"{short}{value}")
        return "_".join(parts)


def even_taps(taps: int = 9) -> Callable[[dict], list]:
    """``overlap_taps`` of an operator that applies the same ``taps`` kernel taps at every output pixel."""
    return lambda options: [[taps, taps], [taps, taps]]


def transposed_taps(kernel_size: int) -> np.ndarray:
    """The tap grid of a stride-2 transposed conv with this kernel: zero insertion + conv k x k is one
    (phases reversed), unpooling to 1 of 4 positions is k=1. k=3: ``[[4, 2], [2, 1]]``."""
    from segnet.metrics.artifacts import overlap_counts

    return overlap_counts(kernel_size, 2)


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
