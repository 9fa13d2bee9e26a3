"""Prediction through segnet.inference: the fold ensemble's forward passes (no per-model retracing)."""

from __future__ import annotations

import logging

import numpy as np


def _tiny(seed: int, two_outputs: bool = False):
    import keras

    keras.utils.set_random_seed(seed)
    x = keras.Input((16, 16, 1))
    logits = keras.layers.Conv2D(1, 3, padding="same", name="logits")(x)
    if not two_outputs:
        return keras.Model(x, logits)
    salt = keras.layers.Dense(1, name="salt")(keras.layers.GlobalAveragePooling2D()(x))
    return keras.Model(x, {"logits": logits, "salt": salt})


def test_an_ensemble_of_six_models_predicts_without_tensorflow_retracing_warnings(caplog):
    # keras' model.predict traces one tf.function per model from the same code, and TensorFlow warns
    # "triggered tf.function retracing" on the user's terminal once 5 such traces pile up (seen with the
    # 5 fold models of a real `segnet predict --run-id <cv run>`); a last, smaller chunk traced again.
    from segnet.inference import EnsemblePredictor, Predictor

    models = [_tiny(s) for s in range(6)]
    images = np.random.default_rng(0).random((45, 101, 101, 1), dtype=np.float32)
    ens = EnsemblePredictor([Predictor(m, 16, "resize", tta=True, batch_size=8, chunk=20) for m in models])
    with caplog.at_level(logging.DEBUG, logger="tensorflow"):
        logits = ens.logits(images)
    assert not [m for m in caplog.messages if "retracing" in m], caplog.messages
    assert logits.shape == (45, 101, 101) and np.isfinite(logits).all()


def test_forward_equals_keras_predict_for_one_and_several_outputs_and_partial_batches():
    from segnet.models.predict import forward

    x = np.random.default_rng(1).random((13, 16, 16, 1), dtype=np.float32)
    one = _tiny(0)
    np.testing.assert_allclose(forward(one, x, 5), one.predict(x, batch_size=5, verbose=0), atol=1e-5)
    flipped = x[:, :, ::-1]  # a negative-stride view, as flip TTA passes it
    np.testing.assert_allclose(forward(one, flipped, 4), one.predict(np.ascontiguousarray(flipped), verbose=0),
                               atol=1e-5)
    two = _tiny(1, two_outputs=True)
    got, want = forward(two, x, 6), two.predict(x, batch_size=6, verbose=0)
    assert set(got) == {"logits", "salt"}
    for k in got:
        np.testing.assert_allclose(got[k], want[k], atol=1e-5)
