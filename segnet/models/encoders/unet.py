"""``unet``: the U-Net encoder (Ronneberger et al. 2015) — per level a conv block then 2x2 max pooling.

Level ``i`` (0-based) is a conv block of ``filters * 2**i`` filters (two conv-BN-ReLU, or residual),
named ``encoder{i+1}`` (its last layer ``encoder{i+1}_out`` is skip ``i``), then a 2x2 'SAME' max pooling
``encoder{i+1}_pool`` (:class:`~segnet.models.layers.MaxPoolWithArgmax` when the decoder needs indices).
Dropout (when > 0) follows every pooling but the first (``encoder{i+1}_dropout``) and the bottleneck
block (``bottleneck``, ``filters * 2**depth`` filters; ``bottleneck_dropout``). Odd sizes work:
101 → 51 → 26 → 13 → 7.
"""

from __future__ import annotations

from segnet.models.encoders._base import EncoderOutput, EncoderSpec, pooled_levels


def build(x, *, depth: int, filters: int, residual: bool = False, dropout: float = 0.0, with_indices: bool = False,
          batch_norm=None) -> EncoderOutput:
    from segnet.models.blocks import conv_block

    def level(x, i):  # level i < depth: encoder{i+1}; i == depth: the bottleneck
        name = f"encoder{i + 1}" if i < depth else "bottleneck"
        return conv_block(x, filters * 2**i, name=name, residual=residual, batch_norm=batch_norm)

    return pooled_levels(x, depth=depth, level=level, dropout=dropout, with_indices=with_indices)


SPEC = EncoderSpec(
    name="unet",
    description="U-Net: conv block (filters * 2**level) then 2x2 max pooling per level; pooling indices on demand",
    provides_indices=True,
    build=build,
    order=10,
)
