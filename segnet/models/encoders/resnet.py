"""``resnet``: a ResNet-34 encoder (He et al. 2016) adapted to 101x101 inputs, optionally ImageNet-initialised.

**Stem.** A 7x7 conv (``filters``, stride 1) - BN - ReLU, ``encoder_stem_*``: ImageNet ResNet's stem kernel
without its stride 2 and its max pooling, so the first skip keeps the full resolution. Always 7x7, with or
without pretrained weights: a model's layout never depends on how it was initialised.

**Stages.** Stage ``k`` (1-based) is ``encoder{k}``: basic blocks (two 3x3 conv-BN, ReLU between, added to
the shortcut, ReLU), ``filters * 2**(k-1)`` channels, (3, 4, 6, 3) blocks for k = 1..4 (ResNet-34; filters 64
gives the ImageNet widths 64/128/256/512). The first block of a wider stage projects its shortcut with a
1x1 conv-BN (``…_block0_0_*``). Stages are joined by 2x2 'SAME' max pooling ``encoder{k}_pool``
(:class:`~segnet.models.layers.MaxPoolWithArgmax` when the decoder needs indices) instead of ResNet's
stride-2 convs, so the skips have the contract's sizes (101, 51, 26, 13, 7) and ``maxunpool`` works.

**Stage mapping for ``model.depth`` d.** Skip ``i`` is the output of stage ``i+1``; the bottleneck is stage
``d+1``, after the d-th pooling. ResNet-34 has four stages; a stage beyond them is one basic block of
``8 * filters`` channels (a centre block: doubling again would add parameters ResNet-34 never had). So d=3
ends in ResNet-34's last stage, d=4 (the default) adds one centre block at 1/16 resolution, d=5..6 one per
extra level, and d=1..2 keep only the first stages. Dropout (when > 0) follows every pooling but the first
(``encoder{k}_dropout``) and the bottleneck (``bottleneck_dropout``), as in the ``unet`` encoder.
``residual`` is ignored: every block is residual. BatchNorm uses epsilon 1.001e-5 (Keras' ResNets;
ImageNet's 1e-5, TF's fused-kernel minimum), so pretrained statistics mean what they meant.

**Pretrained weights** (``model.encoder_weights``, ``model.filters`` 64): a keras-hub
``ResNetBackbone`` in the ResNet-34 configuration (:data:`RESNET34`) is the source layout:

* ``imagenet``: torchvision's ImageNet ResNet-34 (:data:`IMAGENET`, timm's copy on the Hugging Face Hub,
  about 87 MB, downloaded once into the Hugging Face cache and converted by keras-hub's timm loader);
* a ``.weights.h5`` file that such a backbone saved (``backbone.save_weights(path)``), or a keras-hub
  preset folder (``backbone.save_to_preset(dir)``, or the downloaded timm snapshot itself).

All go through :func:`_copy`: each encoder layer takes the source layer of the same place
(``encoder_stem_*`` ← ``conv1_*``, ``encoder{k}_block{b}_{j}_*`` ← ``stack{k-1}_block{b}_{j}_*``); the stem
takes the RGB kernel summed over its input channels (a grey image is R = G = B). Stages beyond the fourth
and the decoder keep their random initialisation.
"""

from __future__ import annotations

import re
from pathlib import Path

from segnet.errors import ConfigError
from segnet.models.encoders._base import EncoderOutput, EncoderSpec, EncoderWeights, pooled_levels

BLOCKS = (3, 4, 6, 3)  # ResNet-34's basic blocks per stage
EXTRA_BLOCKS = 1  # per stage beyond the fourth (the centre block)
BN_EPSILON = 1.001e-5
IMAGENET = "hf://timm/resnet34.tv_in1k"
RESNET34 = {  # keras-hub ResNetBackbone arguments of ResNet-34 (what keras-hub's timm converter builds)
    "input_conv_filters": [64],
    "input_conv_kernel_sizes": [7],
    "stackwise_num_filters": [64, 128, 256, 512],
    "stackwise_num_blocks": list(BLOCKS),
    "stackwise_num_strides": [1, 2, 2, 2],
    "block_type": "basic_block",
}
KEY = "model.encoder_weights"


# ----------------------------------------------------------------------------- the encoder


def _conv_bn(x, filters: int, kernel_size: int, name: str, bn):
    import keras

    x = keras.layers.Conv2D(filters, kernel_size, padding="same", use_bias=False, name=f"{name}_conv")(x)
    return bn(name=f"{name}_bn", epsilon=BN_EPSILON)(x)


def basic_block(x, filters: int, name: str, bn):
    """``relu(shortcut + BN(conv3x3(relu(BN(conv3x3(x))))))``; the shortcut is a 1x1 conv-BN (``{name}_0``)
    when the channels change. Sub-layer names follow keras-hub's ResNet (``_0`` shortcut, ``_1``, ``_2``)."""
    import keras

    shortcut = x if x.shape[-1] == filters else _conv_bn(x, filters, 1, f"{name}_0", bn)
    y = keras.layers.Activation("relu", name=f"{name}_1_relu")(_conv_bn(x, filters, 3, f"{name}_1", bn))
    y = _conv_bn(y, filters, 3, f"{name}_2", bn)
    y = keras.layers.Add(name=f"{name}_add")([shortcut, y])
    return keras.layers.Activation("relu", name=f"{name}_out")(y)


def stage(x, k: int, filters: int, bn):
    """Stage ``k`` (1-based): its blocks at ``filters * 2**(k-1)`` channels (``8 * filters`` beyond the fourth)."""
    blocks = BLOCKS[k - 1] if k <= len(BLOCKS) else EXTRA_BLOCKS
    width = filters * 2 ** min(k - 1, len(BLOCKS) - 1)
    for b in range(blocks):
        x = basic_block(x, width, f"encoder{k}_block{b}", bn)
    return x


def build(x, *, depth: int, filters: int, residual: bool = False, dropout: float = 0.0, with_indices: bool = False,
          batch_norm=None) -> EncoderOutput:
    import keras

    from segnet.models.layers import FusedBatchNormalization

    bn = batch_norm or FusedBatchNormalization
    x = keras.layers.Activation("relu", name="encoder_stem_relu")(_conv_bn(x, filters, 7, "encoder_stem", bn))
    return pooled_levels(x, depth=depth, level=lambda x, i: stage(x, i + 1, filters, bn), dropout=dropout,
                         with_indices=with_indices)


# ----------------------------------------------------------------------------- pretrained weights


def source_name(name: str) -> str | None:
    """The keras-hub ResNetBackbone layer that an encoder layer takes its weights from (None: no source)."""
    if name in ("encoder_stem_conv", "encoder_stem_bn"):
        return "conv1_" + name.rsplit("_", 1)[1]
    m = re.fullmatch(r"encoder(\d+)_(block\d+_\d_(?:conv|bn))", name)
    return f"stack{int(m[1]) - 1}_{m[2]}" if m and int(m[1]) <= len(BLOCKS) else None


def _first_line(e: BaseException, limit: int = 200) -> str:
    """The first line of an exception's message (its type when it has none), at most ``limit`` characters."""
    text = (str(e).strip().splitlines() or [type(e).__name__])[0].strip()
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _download(preset: str) -> str:
    """The local snapshot folder of a Hugging Face preset (``hf://org/name``): from the cache, else downloaded."""
    import huggingface_hub
    from huggingface_hub.utils import logging as hf_logging

    hf_logging.set_verbosity_error()  # its retry warnings would bury the one line that matters
    try:
        return huggingface_hub.snapshot_download(preset.removeprefix("hf://"),
                                                 allow_patterns=["config.json", "model.safetensors"])
    except Exception as e:  # offline, DNS, HTTP, a full disk: one line naming the key, no traceback
        raise ConfigError(
            f"{KEY}=imagenet: cannot download {preset} ({_first_line(e)}); it needs internet once (then the "
            f"Hugging Face cache serves it), or set {KEY} to a ResNet-34 weights file (see README)"
        ) from None


def _backbone(source: str):
    """A keras-hub ResNetBackbone holding the weights ``source`` names (``imagenet``, a file or a folder)."""
    where = _download(IMAGENET) if source == "imagenet" else source
    # Imported after the download: a failed one need not wait for keras-hub.
    from keras_hub.models import ResNetBackbone

    try:
        if Path(where).is_dir():
            backbone = ResNetBackbone.from_preset(where)
        else:
            backbone = ResNetBackbone(**RESNET34)
            backbone.load_weights(where)
    except Exception as e:
        raise ConfigError(f"{KEY}: {source}: not ResNet-34 weights in keras-hub's ResNetBackbone layout "
                          f"({_first_line(e)})") from None
    got = {k: list(v) if isinstance(v, list | tuple) else v for k, v in backbone.get_config().items() if k in RESNET34}
    if got != RESNET34:  # a preset folder may hold another ResNet (ResNet-18, ResNet-50, ...)
        raise ConfigError(f"{KEY}: {source}: a ResNet with {got}, not ResNet-34 ({RESNET34})")
    return backbone


def _copy(weights: dict, model) -> int:
    """Copy ``weights`` (source layer name → its weight arrays) into the model's encoder layers; the stem's
    RGB kernel summed over the input channels. Returns how many layers were filled."""
    import numpy as np

    n = 0
    for layer in model.layers:
        src = weights.get(source_name(layer.name))
        if src is None:
            continue
        if layer.name == "encoder_stem_conv":
            src = [np.sum(src[0], axis=2, keepdims=True)]
        want = [tuple(w.shape) for w in layer.get_weights()]
        if [tuple(w.shape) for w in src] != want:
            raise ConfigError(f"{KEY}: layer {layer.name} has shapes {want}, the weights "
                              f"{[tuple(w.shape) for w in src]} (model.filters must be 64)")
        layer.set_weights(src)
        n += 1
    return n


def fetch(source: str):
    """Read or download the weights ``source`` names (``imagenet``, or an existing path) → ``apply(model)``."""
    backbone = _backbone(source)
    weights = {layer.name: layer.get_weights() for layer in backbone.layers if layer.weights}
    return lambda model: _copy(weights, model)


SPEC = EncoderSpec(
    name="resnet",
    description="ResNet-34 basic blocks (3, 4, 6, 3) after a stride-1 7x7 stem, 2x2 max pooling between stages; "
                "ImageNet weights on demand",
    provides_indices=True,
    build=build,
    order=20,
    weights=EncoderWeights(filters=64, sources=("imagenet",), fetch=fetch),
)
