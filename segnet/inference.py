"""Prediction, defined once: 101x101 images in, logits, salt probabilities and binary masks out.

Used by evaluation (``segnet evaluate`` and the end of training), by ``segnet predict`` and by the
MLflow pyfunc model (``segnet.serving``), so a submission, an evaluation and a served model compute
exactly the same numbers:

1. ``to_network``: 101x101 -> the network size (``data.size``, ``data.resize_mode``),
2. ``predict_logits``: the network's logits, optionally averaged with the horizontally flipped
   prediction (flip TTA),
3. ``from_network``: logits back to 101x101 (crop, or bilinear resize of the *logits*),
4. ``sigmoid`` (overflow-free) for probabilities, ``> threshold`` for masks.

Large image sets go through in chunks, so memory stays bounded whatever the number of images.
``EnsemblePredictor`` is several Predictors as one (the fold models of a `segnet cv` run): the mean of
their 101x101 logits, then one threshold. No MLflow here; TensorFlow only through the models passed in.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from segnet.data.pipeline import from_network, to_network
from segnet.metrics.segmentation import sigmoid

IMG_SIZE = 101


def predict_logits(model, images_net: np.ndarray, batch_size: int, tta: bool = False) -> np.ndarray:
    """Logits at network resolution; with ``tta`` the mean of the plain and the flipped prediction.
    A deep-supervision model's gated ``logits`` output (its other outputs are for training); with ``tta``
    its gate decides on the mean of the two views' salt logits (``heads.gated_logits``)."""
    from segnet.models.heads import gated_logits, is_supervised, mask_logits
    from segnet.models.predict import forward

    if tta and is_supervised(model):
        return gated_logits(model, images_net, batch_size, tta=True)
    z = np.asarray(mask_logits(forward(model, images_net, batch_size)), dtype=np.float32)
    if tta:
        zf = np.asarray(mask_logits(forward(model, images_net[:, :, ::-1], batch_size)), dtype=np.float32)
        z = 0.5 * (z + zf[:, :, ::-1])
    return z


def probabilities_from_logits(logits_net: np.ndarray, resize_mode: str) -> np.ndarray:
    """(N,size,size,1) network logits -> (N,101,101) salt probabilities (logits mapped back first)."""
    return sigmoid(from_network(logits_net, resize_mode)[..., 0])


def as_images(x) -> np.ndarray:
    """(N,101,101,1) or (N,101,101) float images in [0,1] -> (N,101,101,1) float32; anything else fails."""
    a = np.asarray(x, dtype=np.float32)
    if a.ndim == 3:
        a = a[..., None]
    if a.ndim != 4 or a.shape[1:] != (IMG_SIZE, IMG_SIZE, 1):
        raise ValueError(f"expected images of shape (N, 101, 101, 1) (or (N, 101, 101)), got {a.shape}")
    return a


class _FromLogits:
    """Probabilities and masks from a ``logits(images, progress)`` method and a ``threshold``."""

    def probabilities(self, images, progress: bool = False) -> np.ndarray:
        """(N,101,101) float32 salt probabilities in [0,1]."""
        return sigmoid(self.logits(images, progress=progress))

    def masks(self, images, threshold: float | None = None, progress: bool = False) -> np.ndarray:
        """(N,101,101) bool masks: probability > ``threshold`` (default: the run's)."""
        t = self.threshold if threshold is None else float(threshold)
        return self.probabilities(images, progress=progress) > t


def _progress(total: int, progress: bool):
    if not progress:
        return None
    from tqdm import tqdm

    return tqdm(total=total, desc="predict", unit="img")


@dataclass
class Predictor(_FromLogits):
    """A trained Keras model with the way its run maps images to it.

    ``size`` / ``resize_mode``: the run's data.size / data.resize_mode; ``tta``: horizontal-flip TTA
    (the run's eval.tta); ``threshold``: the run's tuned best_threshold; ``batch_size``: network batch;
    ``chunk``: images mapped to the network size at once.
    """

    model: object
    size: int
    resize_mode: str
    tta: bool = True
    threshold: float = 0.5
    batch_size: int = 32
    chunk: int = 256

    @classmethod
    def from_config(cls, model, cfg, threshold: float = 0.5, tta: bool | None = None) -> Predictor:
        return cls(model, cfg.data.size, cfg.data.resize_mode, cfg.eval.tta if tta is None else bool(tta),
                   float(threshold), max(cfg.train.batch_size, 64), max(cfg.train.batch_size, 256))

    def logits(self, images, progress: bool = False) -> np.ndarray:
        """(N,101,101) float32 logits, mapped back from the network size, in chunks."""
        x = as_images(images)
        out = np.zeros(x.shape[:3], dtype=np.float32)
        bar = _progress(len(x), progress)
        step = max(1, int(self.chunk))
        for i in range(0, len(x), step):
            part = to_network(x[i : i + step], self.size, self.resize_mode)
            z = predict_logits(self.model, part, self.batch_size, tta=self.tta)
            out[i : i + len(part)] = from_network(z, self.resize_mode)[..., 0]
            if bar is not None:
                bar.update(len(part))
        if bar is not None:
            bar.close()
        return out


@dataclass
class EnsemblePredictor(_FromLogits):
    """Several Predictors as one: the mean of their 101x101 logits (each with its own size, mapping and
    flip TTA), then ``threshold`` (a `segnet cv` run's out-of-fold threshold)."""

    members: list[Predictor]
    threshold: float = 0.5

    @property
    def tta(self) -> bool:
        return all(m.tta for m in self.members)

    def logits(self, images, progress: bool = False) -> np.ndarray:
        """(N,101,101) float32: the mean of the members' logits, in chunks."""
        x = as_images(images)
        out = np.zeros(x.shape[:3], dtype=np.float32)
        bar = _progress(len(x), progress)
        step = max(1, min(int(m.chunk) for m in self.members))
        for i in range(0, len(x), step):
            part = x[i : i + step]
            out[i : i + len(part)] = np.mean([m.logits(part) for m in self.members], axis=0)
            if bar is not None:
                bar.update(len(part))
        if bar is not None:
            bar.close()
        return out
