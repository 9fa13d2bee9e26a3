"""``bilinear_additive``: bilinear additive upsampling (Wojna et al. 2019, "The devil is in the decoder").

Bilinear 2x resize, then the sum of each run of ``groups`` consecutive channels (C → C/groups: with
groups=4 the number of values is unchanged by the 2x2 upsampling), then conv 3x3 to the block's
filters. Parameter-free upsampling; the conv sees C/groups channels. ``groups=1`` is plain bilinear
resize-convolution.
"""

from __future__ import annotations

from segnet.models.decoders._base import DecoderSpec, Option, even_taps


def make_block(groups: int = 4):
    from segnet.models.blocks import decoder_block
    from segnet.models.layers import BilinearAdditiveConv2D

    def make_up(*, filters, skip_channels, name):
        return BilinearAdditiveConv2D(filters, 3, groups=groups, name=name)

    return decoder_block(make_up)


SPEC = DecoderSpec(
    name="bilinear_additive",
    description="bilinear resize, sum of `groups` consecutive channels (C -> C/groups), then conv 3x3",
    needs_indices=False,
    supports_jit=True,
    options={
        "groups": Option(4, choices=(1, 2, 4, 8), help="channels summed per group (channel reduction)", label="g")
    },
    make_block=make_block,
    overlap_taps=even_taps(9),
    overlap_note=lambda options: (
        f"bilinear resize x2, sum of {options['groups']} consecutive channels, conv 3x3: the same 9 taps at "
        "every output pixel; a constant map stays constant"
    ),
    order=60,
)
