"""``bed_of_nails``: zero insertion — each value at the top-left of its 2x2 cell, zeros elsewhere — then conv 3x3.

Zero insertion followed by a k x k conv is a transposed convolution with stride 2 and kernel k (the
sliding-window form in :mod:`segnet.models.reference`), so it inherits the k=3 uneven overlap.
"""

from __future__ import annotations

from segnet.models.decoders import DecoderSpec, register


def make_block():
    from segnet.models.blocks import decoder_block
    from segnet.models.layers import BedOfNailsConv2D

    def make_up(*, filters, skip_channels, name):
        return BedOfNailsConv2D(filters, 3, name=name)

    return decoder_block(make_up)


def overlap(options: dict) -> str:
    from segnet.models.reference import overlap_pattern, overlap_unevenness

    grid = overlap_pattern(3, 2)[::-1, ::-1]  # phase 0 (a nail) sees 1 nail per axis, the odd phases 2
    rows = "\n".join("    " + " ".join(f"{v:2d}" for v in row) for row in grid)
    return (
        "bed of nails: 1 of 4 positions non-zero (top-left of each 2x2 cell), then conv 3x3 = a transposed "
        f"conv k=3, s=2; taps per output pixel over one 2x2 period:\n{rows}\n"
        f"  unevenness (max-min)/max = {overlap_unevenness(3, 2):.2f}"
    )


SPEC = register(
    DecoderSpec(
        name="bed_of_nails",
        description="zero insertion at the top-left of each 2x2 cell, then conv 3x3",
        needs_indices=False,
        supports_jit=True,
        options={},
        make_block=make_block,
        overlap=overlap,
    )
)
