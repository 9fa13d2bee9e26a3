"""``python -m segnet shapes``: per-stage shapes of the configured U-Net and its decoder's overlap pattern."""

from __future__ import annotations

from segnet.models.decoders import resolve_decoder


def _hwc(tensor) -> str:
    return "x".join(str(d) for d in tuple(tensor.shape)[1:])


def describe(cfg) -> str:
    """A few lines: the model, each encoder level (skip and pooled shape), the bottleneck, each decoder
    block (upsampler output, merged output) and the logits; then what the decoder's operator does."""
    from segnet.models.unet import build_model, count_params

    spec, options = resolve_decoder(cfg.model.decoder, dict(getattr(cfg, "decoder", None) or {}))
    model = build_model(cfg)
    depth = int(cfg.model.depth)
    opts = ", ".join(f"{k}={v}" for k, v in options.items()) or "no options"
    lines = [
        f"{model.name}: decoder {spec.name} ({opts}); {count_params(model):,} parameters"
        f"{'' if spec.supports_jit else '; no XLA (jit) support'}",
        f"  {'input':<14} {_hwc(model.input)}",
    ]
    for level in range(1, depth + 1):
        skip = model.get_layer(f"encoder{level}_out").output
        pool = model.get_layer(f"encoder{level}_pool").output
        pool = pool[0] if isinstance(pool, list | tuple) else pool
        lines.append(f"  {f'encoder{level}':<14} {_hwc(skip):<14} skip; pooled -> {_hwc(pool)}")
    lines.append(f"  {'bottleneck':<14} {_hwc(model.get_layer('bottleneck_out').output)}")
    for stage in range(1, depth + 1):
        up = model.get_layer(f"decoder{stage}_up").output
        out = model.get_layer(f"decoder{stage}_out").output
        fit = "" if tuple(up.shape)[1:3] == tuple(out.shape)[1:3] else " (cropped/padded to the skip)"
        lines.append(f"  {f'decoder{stage}':<14} up -> {_hwc(up):<14} merged -> {_hwc(out)}{fit}")
    lines.append(f"  {'logits':<14} {_hwc(model.output)}")
    lines.append("overlap: " + spec.overlap(options))
    return "\n".join(lines)
