"""What is benchmarked: segnet's models (and the lever rows) on segnet's pipeline, and the baseline
Keras U-Net of the well-known TGS tutorial on Keras' own array adapter, all on synthetic images."""

from __future__ import annotations

import numpy as np

from segnet import paths
from segnet.bench.settings import BASELINE, IMG, LEVERS


def synthetic_arrays(n: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """``n`` salt-like 101x101 images in [0,1] and {0,1} masks (``segnet.data.synthetic``), (n, 101, 101, 1)
    float32 each."""
    from segnet.data.synthetic import synth_image

    pairs = [synth_image(np.random.default_rng([seed, 0, i])) for i in range(n)]
    images = np.stack([np.asarray(p[0], np.float32).reshape(IMG, IMG) for p in pairs]) / 255.0
    masks = np.stack([np.asarray(p[1], np.float32).reshape(IMG, IMG) for p in pairs]) > 0.5
    return images[..., None].astype(np.float32), masks[..., None].astype(np.float32)


def segnet_dataset(images: np.ndarray, masks: np.ndarray, cfg):
    """segnet's training pipeline (``segnet.data.pipeline.make_dataset``): epoch 0, repeated forever."""
    from segnet.data.pipeline import make_dataset

    return make_dataset(images, masks, cfg, training=True, epoch=0).repeat()


def baseline_arrays(images: np.ndarray, masks: np.ndarray, size: int = 128) -> tuple[np.ndarray, np.ndarray]:
    """The tutorial's preprocessing: every image resized to 128x128 once, up front (masks thresholded)."""
    import tensorflow as tf

    x = tf.image.resize(images, (size, size), method="bilinear").numpy()
    y = (tf.image.resize(masks, (size, size), method="bilinear").numpy() > 0.5).astype(np.float32)
    return x.astype(np.float32), y


def baseline_dataset(x: np.ndarray, y: np.ndarray, batch_size: int = 32):
    """What ``model.fit(x, y, batch_size=32, shuffle=True)`` feeds the step: Keras' array adapter."""
    import tensorflow as tf

    try:
        from keras.src.trainers.data_adapters.array_data_adapter import ArrayDataAdapter

        ds = ArrayDataAdapter(x, y, batch_size=batch_size, shuffle=True).get_tf_dataset()
    except ImportError:  # Keras' private module moved: the public equivalent
        ds = tf.data.Dataset.from_tensor_slices((x, y)).shuffle(len(x)).batch(batch_size, drop_remainder=True)
    return ds.repeat().prefetch(tf.data.AUTOTUNE)


def baseline_unet(size: int = 128, n_filters: int = 16, dropout: float = 0.1, batchnorm: bool = True):
    """The TGS tutorial's Keras U-Net (``get_unet``): input resized to ``size``, ``n_filters`` doubling
    over depth 4, two conv-BN-ReLU per block, 3x3 stride-2 Conv2DTranspose, dropout, sigmoid; compiled
    with Adam + binary cross-entropy + accuracy."""
    import keras
    from keras import layers

    def conv2d_block(x, filters):
        for _ in range(2):
            x = layers.Conv2D(filters, 3, kernel_initializer="he_normal", padding="same")(x)
            if batchnorm:
                x = layers.BatchNormalization()(x)
            x = layers.Activation("relu")(x)
        return x

    inp = keras.Input((size, size, 1), name="img")
    skips, x = [], inp
    for level in range(4):
        c = conv2d_block(x, n_filters * 2**level)
        skips.append(c)
        x = layers.MaxPooling2D((2, 2))(c)
        x = layers.Dropout(dropout * 0.5 if level == 0 else dropout)(x)
    x = conv2d_block(x, n_filters * 16)
    for level in reversed(range(4)):
        x = layers.Conv2DTranspose(n_filters * 2**level, (3, 3), strides=(2, 2), padding="same")(x)
        x = layers.concatenate([x, skips[level]])
        x = layers.Dropout(dropout)(x)
        x = conv2d_block(x, n_filters * 2**level)
    out = layers.Conv2D(1, (1, 1), activation="sigmoid")(x)
    model = keras.Model(inp, out, name=BASELINE)
    model.compile(optimizer=keras.optimizers.Adam(), loss="binary_crossentropy", metrics=["accuracy"])
    return model


def default_config():
    """``configs/base.yaml`` defaults (not the quick profile)."""
    from segnet.config import load_config

    return load_config(path=paths.BASE_CONFIG)


def decoder_names() -> list[str]:
    """Every registered decoder, in registry order."""
    from segnet.models.decoders import DECODERS

    return list(DECODERS)


def build_segnet(name: str, cfg):
    """``(config, compiled model, loss function)`` of one segnet row: a decoder at ``cfg``, or a lever row
    (:data:`~segnet.bench.settings.LEVERS`: the default decoder with the lever's overrides, built with
    Keras 3's own BatchNormalization in every conv block instead of the fused layer)."""
    import keras

    from segnet.losses import get_loss
    from segnet.models import build_model

    if name in LEVERS:
        c = cfg.replace(list(LEVERS[name]))
        model = build_model(c, batch_norm=keras.layers.BatchNormalization)
    else:
        c = cfg.replace([f"model.decoder={name}"])
        model = build_model(c)
    model.compile(optimizer=keras.optimizers.Adam(c.train.lr), loss=get_loss(c.train.loss))
    return c, model, get_loss(c.train.loss)
