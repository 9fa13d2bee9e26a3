"""The loss registry: losses on logits, by name — the one list that config validation and training read.

**Adding a loss** = one function in this file decorated with :func:`loss` (its name is the config value
of ``train.loss`` / ``train.finetune_loss``; its first docstring line is its description) plus its README
mention. Every loss takes ``(y_true, logits)`` with shape (B, H, W, 1), returns one value per image,
computes in float32 (safe under mixed precision) and is Keras-serializable, so a checkpoint reloads
with its loss for resuming.

This module does not import TensorFlow at import time: config validation reads :data:`LOSSES` and
must stay fast (a bad loss name fails in well under a second). Each loss imports TensorFlow when it is
first traced; :func:`get_loss` (and importing :mod:`segnet.models`) registers the losses with Keras
under the ``segnet`` package.
"""

from __future__ import annotations

from collections.abc import Callable

from segnet.errors import ConfigError

LOSSES: dict[str, Callable] = {}
"""name → loss function, in definition order."""

_registered_with_keras = False


def loss(fn: Callable) -> Callable:
    """Register ``fn`` under its ``__name__`` (the decorator of every loss here)."""
    if fn.__name__ in LOSSES:
        raise ValueError(f"loss {fn.__name__!r} registered twice")
    LOSSES[fn.__name__] = fn
    return fn


def describe(name: str) -> str:
    """The first line of the loss's docstring."""
    return (LOSSES[name].__doc__ or name).strip().splitlines()[0]


def register_with_keras() -> None:
    """Make every loss Keras-serializable (``segnet>name``); idempotent. Imports Keras."""
    global _registered_with_keras
    if _registered_with_keras:
        return
    import keras

    for name, fn in LOSSES.items():
        keras.saving.register_keras_serializable(package="segnet", name=name)(fn)
    _registered_with_keras = True


def get_loss(name: str) -> Callable:
    """The loss function ``name`` (registered with Keras); ConfigError listing the valid names otherwise."""
    if name not in LOSSES:
        raise ConfigError(f"unknown loss '{name}' (valid: {', '.join(LOSSES)})")
    register_with_keras()
    return LOSSES[name]


def _flat(y_true, logits):
    import tensorflow as tf

    y = tf.cast(tf.reshape(y_true, [tf.shape(y_true)[0], -1]), tf.float32)
    z = tf.cast(tf.reshape(logits, [tf.shape(logits)[0], -1]), tf.float32)
    return y, z


@loss
def bce(y_true, logits):
    """Binary cross-entropy on logits, mean over the pixels of each image."""
    import tensorflow as tf

    y, z = _flat(y_true, logits)
    return tf.reduce_mean(tf.nn.sigmoid_cross_entropy_with_logits(labels=y, logits=z), axis=1)


@loss
def dice(y_true, logits, smooth: float = 1.0):
    """Soft Dice loss per image (1 - Dice of the sigmoid probabilities)."""
    import tensorflow as tf

    y, z = _flat(y_true, logits)
    p = tf.sigmoid(z)
    inter = tf.reduce_sum(p * y, axis=1)
    return 1.0 - (2.0 * inter + smooth) / (tf.reduce_sum(p, axis=1) + tf.reduce_sum(y, axis=1) + smooth)


@loss
def bce_dice(y_true, logits):
    """bce + dice."""
    return bce(y_true, logits) + dice(y_true, logits)


def _lovasz(y_true, logits, penalty: Callable):
    """Per-image Lovász extension of the Jaccard loss (Berman et al. 2018) over ``penalty(errors)``, the
    hinge errors ``1 - logit * sign`` sorted in decreasing order (``penalty`` must keep that order)."""
    import tensorflow as tf

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
    return tf.reduce_sum(penalty(errors_sorted) * tf.stop_gradient(grad), axis=1)


@loss
def lovasz_hinge(y_true, logits):
    """Per-image Lovász hinge (Berman et al. 2018): a convex surrogate that optimises IoU directly (on logits)."""
    import tensorflow as tf

    return _lovasz(y_true, logits, tf.nn.relu)


@loss
def lovasz_elu(y_true, logits):
    """Lovász hinge on elu(errors)+1 instead of relu(errors), the variant top TGS solutions preferred.

    A pixel right by more than the margin (error < 0) costs exp(error) instead of 0, so it keeps a small
    gradient instead of none; elsewhere the penalty is the hinge's plus 1 (the loss is lovasz_hinge + 1 when
    every error is >= 0: the Lovász weights sum to 1), with the same gradient.
    """
    import tensorflow as tf

    return _lovasz(y_true, logits, lambda e: tf.nn.elu(e) + 1.0)
