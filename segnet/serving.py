"""The logged model of a run, as an MLflow pyfunc model that loads and serves without segnet installed.

``segnet.tracking`` logs it (``Run.log_model``): the best checkpoint (``best.keras``) as the artifact
``keras_model``, this package as ``code_paths`` (MLflow puts the copy on ``sys.path`` when loading),
the run's prediction settings inside the pickled ``SaltSegmenter``, and a fixed signature. So
``mlflow.pyfunc.load_model("runs:/<id>/model")`` and ``mlflow models serve -m runs:/<id>/model`` work in
any Python with mlflow, TensorFlow and numpy: the user's stack needs to know nothing of segnet's custom
layers, losses or preprocessing.

Why this module imports mlflow (``segnet.tracking`` is otherwise the only one): the model class must
subclass ``mlflow.pyfunc.PythonModel``, and it must live in a module that a serving process can import
cheaply from the model's copy of the code, with nothing of segnet's tracking machinery (store checks,
locks, logging set-up). It imports ``mlflow.pyfunc`` for the base class and, lazily, ``mlflow.models`` /
``mlflow.types`` for the signature; logging and loading from the store stay in ``segnet.tracking``.

Input: float32 images in [0,1], shape (N, 101, 101, 1) (PNG bytes / 255). Output: a dict
``{"probability": float32 (N, 101, 101), "mask": uint8 (N, 101, 101)}``, computed by
``segnet.inference.Predictor`` exactly as ``segnet predict`` does (the run's data.size / resize_mode
mapping, its eval.tta flip TTA and its tuned threshold). Optional params: ``threshold`` (float) and
``tta`` (bool) override the run's values for one call.
"""

from __future__ import annotations

import dataclasses

import mlflow.pyfunc
import numpy as np

KERAS_ARTIFACT = "keras_model"
IMG_SIZE = 101


def settings_from_config(cfg, threshold: float, members: int = 1) -> dict:
    """What prediction needs from a run: network size and mapping, flip TTA, threshold, batch size, and
    how many Keras models it averages (``members`` > 1: a `segnet cv` fold ensemble or an sgdr run's snapshots)."""
    return {
        "size": int(cfg.data.size),
        "resize_mode": str(cfg.data.resize_mode),
        "tta": bool(cfg.eval.tta),
        "threshold": float(threshold),
        "batch_size": int(max(cfg.train.batch_size, 64)),
        "variant": str(cfg.variant()),
        "members": int(members),
    }


def artifact_names(members: int) -> list[str]:
    """The artifact name of each Keras model: ``keras_model`` alone, ``keras_model_<i>`` in an ensemble."""
    return [KERAS_ARTIFACT] if members == 1 else [f"{KERAS_ARTIFACT}_{i}" for i in range(members)]


def signature(settings: dict):
    """Tensor input (-1, 101, 101, 1) float32; named outputs probability and mask; params threshold, tta."""
    from mlflow.models import ModelSignature
    from mlflow.types import ParamSchema, ParamSpec, Schema, TensorSpec

    shape = (-1, IMG_SIZE, IMG_SIZE)
    return ModelSignature(
        inputs=Schema([TensorSpec(np.dtype(np.float32), (*shape, 1))]),
        outputs=Schema([TensorSpec(np.dtype(np.float32), shape, "probability"),
                        TensorSpec(np.dtype(np.uint8), shape, "mask")]),
        params=ParamSchema([ParamSpec("threshold", "double", float(settings["threshold"])),
                            ParamSpec("tta", "boolean", bool(settings["tta"]))]),
    )


class SaltSegmenter(mlflow.pyfunc.PythonModel):
    """Salt probability and mask at 101x101 for seismic images, with the run's settings.

    Only ``settings`` (a small dict, see ``settings_from_config``) is pickled; the Keras model is read in
    ``load_context`` from the ``keras_model`` artifact, uncompiled (no training loss needed); a fold or
    snapshot ensemble (``settings["members"]`` > 1) reads ``keras_model_0`` ... and averages their logits.
    """

    def __init__(self, settings: dict):
        self.settings = dict(settings)

    def load_context(self, context) -> None:
        import keras

        from segnet.models import register_with_keras

        register_with_keras()  # segnet's custom layers and losses, for Keras to load the model
        from segnet.inference import EnsemblePredictor, Predictor

        s = self.settings
        predictors = [
            Predictor(keras.models.load_model(context.artifacts[name], compile=False), s["size"], s["resize_mode"],
                      tta=s["tta"], threshold=s["threshold"], batch_size=s["batch_size"])
            for name in artifact_names(int(s.get("members", 1)))
        ]
        self._predictor = predictors[0] if len(predictors) == 1 else EnsemblePredictor(predictors, s["threshold"])

    def predict(self, context, model_input: np.ndarray, params=None):
        from segnet.inference import as_images

        params = params or {}
        p = self._predictor
        if "tta" in params and params["tta"] is not None:
            tta = bool(params["tta"])
            p = (dataclasses.replace(p, members=[dataclasses.replace(m, tta=tta) for m in p.members])
                 if hasattr(p, "members") else dataclasses.replace(p, tta=tta))
        threshold = float(params["threshold"]) if params.get("threshold") is not None else p.threshold
        prob = p.probabilities(as_images(model_input))
        return {"probability": prob, "mask": (prob > threshold).astype(np.uint8)}

    def __getstate__(self):
        # Pickle the settings only, never a loaded Keras model.
        return {"settings": self.settings}
