"""Losses on logits: bce, dice, bce_dice, lovasz_hinge (Berman et al. 2018), resolved by name once.

Every loss takes ``(y_true, logits)`` with shape (B, H, W, 1), computes in float32 (safe under mixed
precision) and is Keras-serializable, so a checkpoint reloads with its loss for resuming.
"""

from __future__ import annotations

import keras
import tensorflow as tf

from segnet.errors import ConfigError


def _flat(y_true, logits):
    y = tf.cast(tf.reshape(y_true, [tf.shape(y_true)[0], -1]), tf.float32)
    z = tf.cast(tf.reshape(logits, [tf.shape(logits)[0], -1]), tf.float32)
    return y, z


@keras.saving.register_keras_serializable(package="segnet")
def bce(y_true, logits):
    y, z = _flat(y_true, logits)
    return tf.reduce_mean(tf.nn.sigmoid_cross_entropy_with_logits(labels=y, logits=z), axis=1)


@keras.saving.register_keras_serializable(package="segnet")
def dice(y_true, logits, smooth: float = 1.0):
    """Soft Dice loss per image (1 - Dice of the sigmoid probabilities)."""
    y, z = _flat(y_true, logits)
    p = tf.sigmoid(z)
    inter = tf.reduce_sum(p * y, axis=1)
    return 1.0 - (2.0 * inter + smooth) / (tf.reduce_sum(p, axis=1) + tf.reduce_sum(y, axis=1) + smooth)


@keras.saving.register_keras_serializable(package="segnet")
def bce_dice(y_true, logits):
    return bce(y_true, logits) + dice(y_true, logits)


@keras.saving.register_keras_serializable(package="segnet")
def lovasz_hinge(y_true, logits):
    """Per-image Lovász hinge: a convex surrogate that optimises IoU directly (on logits)."""
    y, z = _flat(y_true, logits)
    signs = 2.0 * y - 1.0
    errors = 1.0 - z * signs
    errors_sorted, perm = tf.math.top_k(errors, k=tf.shape(errors)[1])
    gt_sorted = tf.gather(y, perm, batch_dims=1)
    gts = tf.reduce_sum(gt_sorted, axis=1, keepdims=True)
    intersection = gts - tf.cumsum(gt_sorted, axis=1)
    union = gts + tf.cumsum(1.0 - gt_sorted, axis=1)
    jaccard = 1.0 - intersection / union
    grad = tf.concat([jaccard[:, :1], jaccard[:, 1:] - jaccard[:, :-1]], axis=1)
    return tf.reduce_sum(tf.nn.relu(errors_sorted) * tf.stop_gradient(grad), axis=1)


LOSSES = {"bce": bce, "dice": dice, "bce_dice": bce_dice, "lovasz_hinge": lovasz_hinge}


def get_loss(name: str):
    try:
        return LOSSES[name]
    except KeyError:
        raise ConfigError(f"unknown loss '{name}' (valid: {', '.join(LOSSES)})") from None
