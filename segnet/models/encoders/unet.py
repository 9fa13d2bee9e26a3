"""``unet``: the U-Net encoder (Ronneberger et al. 2015) — per level a conv block then 2x2 max pooling.

Level ``i`` (0-based) is a conv block of ``filters * 2**i`` filters (two conv-BN-ReLU, or residual),
named ``encoder{i+1}`` (its last layer ``encoder{i+1}_out`` is skip ``i``), then a 2x2 'SAME' max pooling
``encoder{i+1}_pool`` (:class:`~segnet.models.layers.MaxPoolWithArgmax` when the decoder needs indices).
Dropout (when > 0) follows every pooling but the first (``encoder{i+1}_dropout``) and the bottleneck
block (``bottleneck``, ``filters * 2**depth`` filters; ``bottleneck_dropout``). Odd sizes work:
101 → 51 → 26 → 13 → 7.
"""

from __future__ import annotations

from segnet.models.encoders._base import EncoderOutput, EncoderSpec


def build(x, *, depth: int, filters: int, residual: bool = False, dropout: float = 0.0, with_indices: bool = False,
          batch_norm=None) -> EncoderOutput:
    import keras

    from segnet.models.blocks import conv_block
    from segnet.models.layers import MaxPoolWithArgmax

    skips, indices, pooled = [], [], []
    for level in range(depth):
        x = conv_block(x, filters * 2**level, name=f"encoder{level + 1}", residual=residual, batch_norm=batch_norm)
        skips.append(x)
        if with_indices:
            x, idx = MaxPoolWithArgmax(name=f"encoder{level + 1}_pool")(x)
        else:
            x, idx = keras.layers.MaxPooling2D(2, padding="same", name=f"encoder{level + 1}_pool")(x), None
        indices.append(idx)
        pooled.append(x)
        if dropout > 0 and level > 0:
            x = keras.layers.Dropout(dropout, name=f"encoder{level + 1}_dropout")(x)
    x = conv_block(x, filters * 2**depth, name="bottleneck", residual=residual, batch_norm=batch_norm)
    if dropout > 0:
        x = keras.layers.Dropout(dropout, name="bottleneck_dropout")(x)
    return EncoderOutput(bottleneck=x, skips=skips, indices=indices, downsampled=pooled)


SPEC = EncoderSpec(
    name="unet",
    description="U-Net: conv block (filters * 2**level) then 2x2 max pooling per level; pooling indices on demand",
    provides_indices=True,
    build=build,
    order=10,
)
