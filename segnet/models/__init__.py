"""Models: the U-Net, its encoder and decoder registries, custom layers and the numpy reference of convolutions.

Importing this package is cheap (no TensorFlow). The first use of a model builder (``build_model``,
``CUSTOM_OBJECTS``, ...) or ``register_with_keras()`` registers every custom layer and segnet's losses
with Keras, so ``keras.models.load_model`` reloads a saved segnet model (compiled or not) without
``custom_objects`` (``CUSTOM_OBJECTS`` is there for explicit use).

Extension points (one file each, found by :mod:`pkgutil`): a decoder in ``segnet/models/decoders/``
(contract: :mod:`segnet.models.decoders`), an encoder in ``segnet/models/encoders/`` (contract:
:mod:`segnet.models.encoders`); a loss is one function in :mod:`segnet.losses`.
"""

import importlib

from segnet.models.decoders import DECODERS, DecoderSpec, Option, resolve_decoder
from segnet.models.encoders import ENCODERS, EncoderOutput, EncoderSpec, resolve_encoder

# The registries above are light (no TensorFlow): config validation imports them, and a config error
# must come in a second, not after TensorFlow's import. What builds or loads models is imported on
# first use (PEP 562), and that first use also registers the custom layers and the losses with Keras.
_LAZY = {
    "CUSTOM_OBJECTS": "segnet.models.layers",
    "UNet": "segnet.models.unet",
    "assemble": "segnet.models.unet",
    "build_model": "segnet.models.unet",
    "count_params": "segnet.models.unet",
    "encoder": "segnet.models.unet",
}


def register_with_keras() -> None:
    """Register segnet's custom layers and losses with Keras (idempotent): after this,
    ``keras.models.load_model`` reloads any segnet model, compiled or not, without ``custom_objects``."""
    importlib.import_module("segnet.models.layers")
    importlib.import_module("segnet.models.heads")  # the deep-supervision losses
    from segnet.losses import register_with_keras as register_losses

    register_losses()


def __getattr__(name: str):
    if name not in _LAZY:
        raise AttributeError(f"module 'segnet.models' has no attribute {name!r}")
    value = getattr(importlib.import_module(_LAZY[name]), name)
    register_with_keras()
    globals()[name] = value
    return value


__all__ = [
    "CUSTOM_OBJECTS",
    "DECODERS",
    "DecoderSpec",
    "ENCODERS",
    "EncoderOutput",
    "EncoderSpec",
    "Option",
    "UNet",
    "assemble",
    "build_model",
    "count_params",
    "encoder",
    "register_with_keras",
    "resolve_decoder",
    "resolve_encoder",
]
