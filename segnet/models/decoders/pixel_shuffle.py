"""``pixel_shuffle``: sub-pixel convolution (Shi et al. 2016) — conv 3x3 to 4·filters, then depth_to_space(2).

Each of the 4 sub-pixel positions has its own kernel; if they differ, a constant input gives a 2x2
periodic output. ICNR (Aitken et al. 2017) initialises the 4 kernels equal, so the operator starts
checkerboard-free (``icnr``, default true); training may move them apart.
"""

from __future__ import annotations

from segnet.models.decoders._base import DecoderSpec, Option, even_taps


def make_block(icnr: bool = True):
    from segnet.models.blocks import decoder_block
    from segnet.models.layers import SubPixelConv2D

    def make_up(*, filters, skip_channels, name):
        return SubPixelConv2D(filters, 3, icnr=icnr, name=name)

    return decoder_block(make_up)


def overlap_note(options: dict) -> str:
    if options["icnr"]:
        return (
            "sub-pixel conv: 4 sub-kernels of 3x3 taps, one per position of each 2x2 cell; ICNR makes them equal "
            "at init, so a constant map gives a constant output (training can move them apart)"
        )
    return (
        "sub-pixel conv: 4 independent sub-kernels of 3x3 taps, one per position of each 2x2 cell: even tap "
        "counts, but a constant map gives a 2x2-periodic output (see artifact_const_response)"
    )


SPEC = DecoderSpec(
    name="pixel_shuffle",
    description="sub-pixel conv: conv 3x3 to 4x channels then depth_to_space 2; ICNR init by default",
    needs_indices=False,
    supports_jit=True,
    options={"icnr": Option(True, choices=(True, False), help="ICNR initialisation (constant in, constant out)")},
    make_block=make_block,
    overlap_taps=even_taps(9),
    overlap_note=overlap_note,
    order=50,
)
