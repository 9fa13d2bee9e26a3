"""``transposed``: Conv2DTranspose, stride 2, 'same' padding — the classic U-Net decoder.

With kernel 3 and stride 2 the stamps of neighbouring input pixels overlap unevenly (tap counts
[[4, 2], [2, 1]] per 2x2 period, unevenness 0.75): the textbook source of checkerboards (Odena et al.
2016). Kernel 4 is divisible by the stride, so every output pixel gets 4 taps (unevenness 0).
"""

from __future__ import annotations

from segnet.models.decoders._base import DecoderSpec, Option, transposed_taps


def make_block(kernel_size: int = 3):
    import keras

    from segnet.models.blocks import decoder_block

    def make_up(*, filters, skip_channels, name):
        return keras.layers.Conv2DTranspose(filters, kernel_size, strides=2, padding="same", name=name)

    return decoder_block(make_up)


SPEC = DecoderSpec(
    name="transposed",
    description="Conv2DTranspose stride 2 ('same'); kernel 3 overlaps unevenly, kernel 4 evenly",
    needs_indices=False,
    supports_jit=True,
    options={
        "kernel_size": Option(3, choices=(3, 4), help="3: classic, uneven overlap; 4: even overlap", label="k")
    },
    make_block=make_block,
    overlap_taps=lambda options: transposed_taps(options["kernel_size"]),
    overlap_note=lambda options: f"transposed conv k={options['kernel_size']}, s=2",
    order=10,
)
