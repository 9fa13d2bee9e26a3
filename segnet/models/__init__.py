"""Models: the U-Net, its decoder registry, custom layers and the numpy reference of convolutions.

Importing this package registers every custom layer with Keras, so ``keras.models.load_model`` reloads
a saved segnet model without ``custom_objects`` (``CUSTOM_OBJECTS`` is there for explicit use).
"""

from segnet.models.decoders import DECODERS, DecoderSpec, Option, resolve_decoder
from segnet.models.layers import CUSTOM_OBJECTS
from segnet.models.unet import build_model, count_params, encoder

__all__ = [
    "CUSTOM_OBJECTS",
    "DECODERS",
    "DecoderSpec",
    "Option",
    "build_model",
    "count_params",
    "encoder",
    "resolve_decoder",
]
