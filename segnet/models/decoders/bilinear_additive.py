"""``bilinear_additive``: bilinear additive upsampling (Wojna et al. 2019, "The devil is in the decoder").

Bilinear 2x resize, then the sum of each run of ``groups`` consecutive channels (C → C/groups: with
groups=4 the number of values is unchanged by the 2x2 upsampling), then conv 3x3 to the block's
filters. Parameter-free upsampling; the conv sees C/groups channels. ``groups=1`` is plain bilinear
resize-convolution.
"""

from __future__ import annotations

from segnet.models.decoders import DecoderSpec, Option, register


def make_block(groups: int = 4):
    from segnet.models.blocks import decoder_block
    from segnet.models.layers import BilinearAdditiveConv2D

    def make_up(*, filters, skip_channels, name):
        return BilinearAdditiveConv2D(filters, 3, groups=groups, name=name)

    return decoder_block(make_up)


def overlap(options: dict) -> str:
    return (
        f"bilinear resize x2, sum of {options['groups']} consecutive channels, conv 3x3: every output pixel "
        "gets the same taps (uneven 0); a constant map stays constant"
    )


SPEC = register(
    DecoderSpec(
        name="bilinear_additive",
        description="bilinear resize, sum of `groups` consecutive channels (C -> C/groups), then conv 3x3",
        needs_indices=False,
        supports_jit=True,
        options={"groups": Option(4, choices=(1, 2, 4, 8), help="channels summed per group (channel reduction)")},
        make_block=make_block,
        overlap=overlap,
    )
)
