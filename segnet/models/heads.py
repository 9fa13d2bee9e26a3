"""What sits on the decoder: scSE attention, the hypercolumn head, deep supervision and the empty-mask gate.

Each is a config switch that works with every encoder and decoder (``model.scse``, ``model.hypercolumn``,
``model.deep_supervision``), the components the top TGS solutions agreed on:

* **scSE** (Roy et al. 2018, concurrent spatial and channel squeeze-and-excitation) after every decoder
  block: the block's output times a per-channel gate (global pooling → bottleneck MLP → sigmoid) plus
  the output times a per-pixel gate (1x1 conv → sigmoid).
* **Hypercolumn**: every decoder stage's output resized (bilinear) to the full network size and
  concatenated before the final 1x1 conv, so coarse stages speak directly to the logits.
* **Deep supervision with an empty-mask head** (the 1st- and 14th-place TGS solutions): a 1x1 logit head
  on every decoder stage below full resolution (resized to full size: output ``aux{stage}``) and an
  image-level "contains salt" logit on the bottleneck (global average pooling → dense: output ``salt``).
  The mask losses (``mask``, the ungated main logits, and the ``aux`` heads) count non-empty images only;
  the classifier's BCE counts every image. At inference the classifier gates the mask
  (:class:`~segnet.models.layers.EmptyGate`, output ``logits``): an image whose salt probability is below
  the gate's threshold gets an empty mask. The threshold is a weight of the model, tuned on validation
  at the end of training (``gate_threshold`` in MLflow), so every consumer of ``logits`` (evaluation,
  ``predict``, the MLflow pyfunc model) applies the same gate.

A model with deep supervision returns a dict of outputs (``logits`` first); :func:`mask_logits` is how
everything that predicts reads the gated mask logits from either kind of model.
"""

from __future__ import annotations

import keras
import numpy as np
import pandas as pd

MASK_WEIGHT, AUX_WEIGHT, SALT_WEIGHT = 1.0, 0.1, 0.05
"""Loss weights under deep supervision: the main mask, each auxiliary stage, the salt classifier (the last
is ``train.salt_weight``'s default)."""

GATE_OUTPUT, MASK_OUTPUT, SALT_OUTPUT = "logits", "mask", "salt"


def scse(x, name: str, reduction: int = 4):
    """``x * cSE(x) + x * sSE(x)``: channel gate (squeeze to C/reduction, excite to C) and spatial gate."""
    c = int(x.shape[-1])
    s = keras.layers.GlobalAveragePooling2D(keepdims=True, name=f"{name}_squeeze")(x)
    s = keras.layers.Conv2D(max(1, c // reduction), 1, activation="relu", name=f"{name}_reduce")(s)
    s = keras.layers.Conv2D(c, 1, activation="sigmoid", name=f"{name}_channel_gate")(s)
    channel = keras.layers.Multiply(name=f"{name}_channel")([x, s])
    p = keras.layers.Conv2D(1, 1, activation="sigmoid", name=f"{name}_spatial_gate")(x)
    spatial = keras.layers.Multiply(name=f"{name}_spatial")([x, p])
    return keras.layers.Add(name=f"{name}_out")([channel, spatial])


def to_full_size(x, size: int, name: str):
    """``x`` resized (bilinear) to ``size`` x ``size``; unchanged when it already is."""
    if tuple(x.shape[1:3]) == (size, size):
        return x
    return keras.layers.Resizing(size, size, interpolation="bilinear", name=name)(x)


def hypercolumn(stage_outputs: list, size: int):
    """Every stage's output at full size, concatenated (``hypercolumn``)."""
    full = [to_full_size(x, size, f"hypercolumn{s}_resize") for s, x in enumerate(stage_outputs, start=1)]
    return keras.layers.Concatenate(name="hypercolumn")(full)


def logit_conv(x, name: str):
    """A 1x1 conv to one float32 logit per pixel (float32 under mixed precision: logits feed the loss)."""
    return keras.layers.Conv2D(1, 1, dtype="float32", name=name)(x)


def supervised_outputs(main_logits, stage_outputs: list, bottleneck, size: int) -> dict:
    """The deep-supervision outputs: gated ``logits``, ungated ``mask``, ``aux{s}`` per stage, ``salt``."""
    from segnet.models.layers import EmptyGate

    pooled = keras.layers.GlobalAveragePooling2D(name="salt_pool")(bottleneck)
    salt = keras.layers.Dense(1, dtype="float32", name=SALT_OUTPUT)(pooled)
    outputs = {GATE_OUTPUT: EmptyGate(name=GATE_OUTPUT)([main_logits, salt]), MASK_OUTPUT: main_logits}
    for s, x in enumerate(stage_outputs[:-1], start=1):  # the last stage is the main head's input
        outputs[f"aux{s}"] = to_full_size(logit_conv(x, f"aux{s}_conv"), size, f"aux{s}")
    outputs[SALT_OUTPUT] = salt
    return outputs


def is_supervised(model) -> bool:
    """A model built with deep supervision (dict outputs with the gated ``logits``)."""
    return SALT_OUTPUT in getattr(model, "output_names", ()) or isinstance(getattr(model, "output", None), dict)


def mask_logits(out):
    """The (gated) mask logits of a model's output: the output itself, or its ``logits`` entry."""
    return out[GATE_OUTPUT] if isinstance(out, dict) else out


# -- training -----------------------------------------------------------------------------------------------
def compile_losses(model, loss_name: str, salt_weight: float | None = None) -> tuple[dict | object, dict | None]:
    """``(loss, loss_weights)`` for ``model.compile``: the named loss alone for a plain model; under deep
    supervision the non-empty-only mask losses (main and aux) and the salt classifier's BCE, weighted
    ``salt_weight`` (None: :data:`SALT_WEIGHT`)."""
    from segnet.losses import get_loss

    base = get_loss(loss_name)
    if not is_supervised(model):
        return base, None
    names = [n for n in model.output_names if n.startswith("aux")]
    losses = {MASK_OUTPUT: NonEmptyMaskLoss(loss_name), SALT_OUTPUT: SaltPresenceLoss()}
    weights = {MASK_OUTPUT: MASK_WEIGHT, SALT_OUTPUT: SALT_WEIGHT if salt_weight is None else float(salt_weight)}
    for n in names:
        losses[n], weights[n] = NonEmptyMaskLoss(loss_name), AUX_WEIGHT
    return losses, weights


def loss_name_of(model) -> str | None:
    """The name of the mask loss ``model`` is compiled with (None when not compiled)."""
    loss = getattr(model, "loss", None)
    if isinstance(loss, dict):
        loss = loss.get(MASK_OUTPUT)
    if isinstance(loss, NonEmptyMaskLoss):
        return loss.base
    return getattr(loss, "__name__", None)


def targets(model, ds):
    """The training dataset with one mask target per loss of ``model`` (the mask itself for each)."""
    if not is_supervised(model):
        return ds
    keys = [n for n in model.output_names if n != GATE_OUTPUT]
    return ds.map(lambda x, y: (x, {k: y for k in keys}))


@keras.saving.register_keras_serializable(package="segnet")
class NonEmptyMaskLoss(keras.losses.Loss):
    """A registered mask loss (``base``) per image, zero on images without salt."""

    def __init__(self, base: str, name: str | None = None, reduction: str = "sum_over_batch_size"):
        super().__init__(name=name or f"{base}_nonempty", reduction=reduction)
        self.base = base

    def call(self, y_true, y_pred):
        import tensorflow as tf

        from segnet.losses import get_loss

        per_image = get_loss(self.base)(y_true, y_pred)
        return per_image * tf.cast(_has_salt(y_true), per_image.dtype)

    def get_config(self) -> dict:
        return {"base": self.base, "name": self.name, "reduction": self.reduction}


@keras.saving.register_keras_serializable(package="segnet")
class SaltPresenceLoss(keras.losses.Loss):
    """BCE of the salt classifier's logit against "the mask has any salt"."""

    def __init__(self, name: str = "salt_bce", reduction: str = "sum_over_batch_size"):
        super().__init__(name=name, reduction=reduction)

    def call(self, y_true, y_pred):
        import tensorflow as tf

        label = tf.cast(_has_salt(y_true), tf.float32)[:, None]
        return tf.reduce_mean(tf.nn.sigmoid_cross_entropy_with_logits(labels=label,
                                                                      logits=tf.cast(y_pred, tf.float32)), axis=-1)

    def get_config(self) -> dict:
        return {"name": self.name, "reduction": self.reduction}


def _has_salt(y_true):
    import tensorflow as tf

    return tf.reduce_max(tf.reshape(y_true, [tf.shape(y_true)[0], -1]), axis=1) > 0.5


# -- the gate's threshold -------------------------------------------------------------------------------------
def set_gate_threshold(model, threshold: float) -> None:
    model.get_layer(GATE_OUTPUT).threshold.assign(float(threshold))


def gate_threshold(model) -> float | None:
    """The gate's threshold, None for a model without the gate."""
    if not is_supervised(model):
        return None
    return float(model.get_layer(GATE_OUTPUT).threshold.numpy())


def mask_and_salt(model, images_net: np.ndarray, batch_size: int, tta: bool) -> tuple[np.ndarray, np.ndarray]:
    """The ungated mask logits (N,size,size,1) and the salt logits (N,), with ``tta`` each the mean of the
    plain and the horizontally flipped view (the flipped mask flipped back)."""
    from segnet.models.predict import forward

    out = forward(model, images_net, batch_size)
    mask, salt = np.asarray(out[MASK_OUTPUT], np.float32), np.asarray(out[SALT_OUTPUT], np.float32)[:, 0]
    if tta:
        flipped = forward(model, images_net[:, :, ::-1], batch_size)
        mask = 0.5 * (mask + np.asarray(flipped[MASK_OUTPUT], np.float32)[:, :, ::-1])
        salt = 0.5 * (salt + np.asarray(flipped[SALT_OUTPUT], np.float32)[:, 0])
    return mask, salt


def gated_logits(model, images_net: np.ndarray, batch_size: int, tta: bool) -> np.ndarray:
    """The gated mask logits: the model's own gate (its ``logits`` layer) applied to the views' mean mask
    and salt logits, so with ``tta`` an image is emptied when the mean salt probability is below the
    threshold, not when either view's is (averaging two gated outputs would empty it then: flip TTA made
    tgs_map worse, 0.7946 -> 0.7900 on the tgs_best fold-0 model)."""
    mask, salt = mask_and_salt(model, images_net, batch_size, tta)
    return np.asarray(model.get_layer(GATE_OUTPUT)([mask, salt[:, None]]), dtype=np.float32)


def tune_gate(model, images_net: np.ndarray, masks: np.ndarray, resize_mode: str, batch_size: int,
              tta: bool = False) -> dict:
    """Set the gate's threshold to the one that maximises the validation tgs_map, and say what it bought.

    Per image: the ungated mask (``mask`` output > 0) scores its tgs precision when the gate keeps it; a
    gated image scores 1 if it has no salt, else 0. Thresholds 0.00..1.00 (0: never gate) are tried; the
    lowest best one wins. With ``tta`` the mask and salt logits are those flip TTA predicts with
    (:func:`gated_logits`). ``masks``: (N,101,101,1) truth. Returns the metrics to log.
    """
    from segnet.data.pipeline import from_network
    from segnet.metrics.segmentation import sigmoid, tgs_scores

    mask, salt_logits = mask_and_salt(model, images_net, batch_size, tta)
    salt = sigmoid(salt_logits)
    truth = masks[..., 0] > 0.5
    kept = tgs_scores(truth, from_network(mask, resize_mode)[..., 0] > 0)
    empty = ~truth.reshape(len(truth), -1).any(axis=1)
    threshold, score = best_gate(salt, kept, empty)
    set_gate_threshold(model, threshold)
    gated = salt < threshold
    return {
        "gate_threshold": threshold,
        "val_tgs_map_ungated": float(kept.mean()),
        "val_tgs_map_gated": score,
        "val_tgs_map_perfect_gate": float(np.where(empty, 1.0, kept).mean()),  # the gate's cost: this minus gated
        "gate_accuracy": float(((salt >= threshold) == ~empty).mean()),
        "gate_auc": salt_auc(salt, ~empty),
        "gate_emptied": float(gated.mean()),
        "gate_false_empty": float((gated & ~empty).mean()),
    }


def best_gate(salt: np.ndarray, kept: np.ndarray, empty: np.ndarray) -> tuple[float, float]:
    """``(threshold, tgs_map)``: the gate threshold of 0.00..1.00 (0: never gate) that maximises the mean
    per-image score (``kept``, the image's score with its mask, where the salt probability ``salt`` is at
    least the threshold; else 1 for an ``empty`` image, 0 for a salt image), the lowest best one, and that
    score."""
    grid = np.round(np.linspace(0.0, 1.0, 101), 2)
    scores = np.array([np.where(salt >= t, kept, np.asarray(empty, np.float64)).mean() for t in grid])
    best = int(np.flatnonzero(scores >= scores.max() - 1e-12)[0])
    return float(grid[best]), float(scores[best])


def salt_auc(salt: np.ndarray, has_salt: np.ndarray) -> float:
    """ROC AUC of the classifier's salt probabilities (the chance that a salt image outranks an empty one,
    ties counted half; Mann-Whitney); NaN when every image is of one kind."""
    has_salt = np.asarray(has_salt, bool)
    n_pos, n_neg = int(has_salt.sum()), int((~has_salt).sum())
    if not n_pos or not n_neg:
        return float("nan")
    ranks = pd.Series(np.asarray(salt, np.float64)).rank(method="average").to_numpy()
    return float((ranks[has_salt].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))
