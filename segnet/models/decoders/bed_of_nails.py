"""``bed_of_nails``: zero insertion — each value at the top-left of its 2x2 cell, zeros elsewhere — then conv 3x3.

Zero insertion followed by a k x k conv is a transposed convolution with stride 2 and kernel k (the
sliding-window form in :mod:`segnet.models.reference`), so it inherits the k=3 uneven overlap
(unevenness 0.75, tap counts ``[[1, 2], [2, 4]]`` with phase 0 at a nail).
"""

from __future__ import annotations

from segnet.models.decoders._base import DecoderSpec, transposed_taps


def make_block():
    from segnet.models.blocks import decoder_block
    from segnet.models.layers import BedOfNailsConv2D

    def make_up(*, filters, skip_channels, name):
        return BedOfNailsConv2D(filters, 3, name=name)

    return decoder_block(make_up)


SPEC = DecoderSpec(
    name="bed_of_nails",
    description="zero insertion at the top-left of each 2x2 cell, then conv 3x3",
    needs_indices=False,
    supports_jit=True,
    options={},
    make_block=make_block,
    overlap_taps=lambda options: transposed_taps(3)[::-1, ::-1],  # phase 0 (a nail) sees 1 nail per axis
    overlap_note=lambda options: (
        "bed of nails: 1 of 4 positions non-zero (top-left of each 2x2 cell), then conv 3x3 = a transposed "
        "conv k=3, s=2"
    ),
    order=40,
)
