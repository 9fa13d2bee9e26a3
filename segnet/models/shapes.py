"""``python -m segnet shapes``: per-stage shapes of the configured U-Net and its decoder's overlap pattern."""

from __future__ import annotations


def _hwc(tensor) -> str:
    return "x".join(str(d) for d in tuple(tensor.shape)[1:])


def describe(cfg) -> str:
    """A few lines: the model, each encoder level (skip and downsampled shape, from the encoder's
    :class:`~segnet.models.encoders.EncoderOutput`), the bottleneck, each decoder block (upsampler output,
    merged output: the decoder contract's ``decoder{s}_up`` / ``decoder{s}_out``) and the logits; then the
    decoder's overlap pattern (:meth:`~segnet.models.decoders.DecoderSpec.overlap`)."""
    from segnet.models.unet import assemble, count_params

    unet = assemble(cfg)
    model, spec, options, features = unet.model, unet.decoder, unet.options, unet.features
    opts = ", ".join(f"{k}={v}" for k, v in options.items()) or "no options"
    lines = [
        f"{model.name}: encoder {unet.encoder.name}, decoder {spec.name} ({opts}); {count_params(model):,} parameters"
        f"{'' if spec.supports_jit else '; no XLA (jit) support'}",
        f"  {'input':<14} {_hwc(model.input)}",
    ]
    for level, skip in enumerate(features.skips, start=1):
        down = features.downsampled[level - 1] if features.downsampled else None
        tail = f"; pooled -> {_hwc(down)}" if down is not None else ""
        lines.append(f"  {f'encoder{level}':<14} {_hwc(skip):<14} skip{tail}")
    lines.append(f"  {'bottleneck':<14} {_hwc(features.bottleneck)}")
    for stage in range(1, len(features.skips) + 1):
        up = model.get_layer(f"decoder{stage}_up").output
        out = model.get_layer(f"decoder{stage}_out").output
        fit = "" if tuple(up.shape)[1:3] == tuple(out.shape)[1:3] else " (cropped/padded to the skip)"
        lines.append(f"  {f'decoder{stage}':<14} up -> {_hwc(up):<14} merged -> {_hwc(out)}{fit}")
    lines.append(f"  {'logits':<14} {_hwc(model.output)}")
    lines.append("overlap: " + spec.overlap(options))
    return "\n".join(lines)
