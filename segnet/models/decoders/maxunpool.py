"""``maxunpool``: SegNet max-unpooling (Badrinarayanan et al. 2017) with the encoder's argmax indices.

The encoder pools with :class:`~segnet.models.layers.MaxPoolWithArgmax` and hands the indices of each
level to the decoder. In a U-Net the block at stage s receives the previous block's output, which has
twice the channels of the skip whose pooling recorded the indices; so the upsampler
(:class:`~segnet.models.layers.UnpoolConv2D`) first maps the channels to the skip's with a 1x1 conv,
then puts every value back at its argmax position (zeros at the other 3 of each 2x2 cell). The merge
convs after the concatenation fill in. ``tf.nn.max_pool_with_argmax`` has no XLA kernel: no jit.
"""

from __future__ import annotations

from segnet.models.decoders._base import DecoderSpec, transposed_taps


def make_block():
    from segnet.models.blocks import decoder_block
    from segnet.models.layers import UnpoolConv2D

    def make_up(*, filters, skip_channels, name):
        return UnpoolConv2D(skip_channels, kernel_size=1, name=name)

    return decoder_block(make_up, needs_indices=True)


SPEC = DecoderSpec(
    name="maxunpool",
    description="SegNet max-unpooling at the encoder's argmax positions (1x1 conv to the skip's channels first)",
    needs_indices=True,
    supports_jit=False,
    options={},
    make_block=make_block,
    overlap_taps=lambda options: transposed_taps(1),  # a kernel-1, stride-2 scatter: [[1, 0], [0, 0]]
    overlap_note=lambda options: (
        "conv 1x1 to the skip's channels, then max-unpooling: 1 of 4 positions non-zero in each 2x2 cell, "
        "at the encoder's argmax (data-dependent; top-left for a constant map)"
    ),
    order=30,
)
