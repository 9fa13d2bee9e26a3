"""``upsampling``: resize-convolution (Odena et al. 2016) — UpSampling2D (nearest or bilinear), then conv 3x3.

The resize gives every output pixel the same weight pattern, so the operator has no built-in
checkerboard; the ``decoder{stage}_up`` layer (:class:`~segnet.models.layers.ResizeConv2D`) holds both
the resize and the conv.
"""

from __future__ import annotations

from segnet.models.decoders._base import DecoderSpec, Option, even_taps


def make_block(interpolation: str = "nearest"):
    from segnet.models.blocks import decoder_block
    from segnet.models.layers import ResizeConv2D

    def make_up(*, filters, skip_channels, name):
        return ResizeConv2D(filters, 3, interpolation=interpolation, name=name)

    return decoder_block(make_up)


SPEC = DecoderSpec(
    name="upsampling",
    description="UpSampling2D (nearest|bilinear) then conv 3x3: resize-convolution",
    needs_indices=False,
    supports_jit=True,
    options={"interpolation": Option("nearest", choices=("nearest", "bilinear"), help="resize method", label="")},
    make_block=make_block,
    overlap_taps=even_taps(9),
    overlap_note=lambda options: (
        f"{options['interpolation']} resize x2, then conv 3x3: the same 9 taps at every output pixel; "
        "a constant map stays constant"
    ),
    order=20,
)
