"""The loss registry: one list that config validation and training read, light enough that a bad loss
name fails without TensorFlow; the fine-tune loss as a config key; what each loss computes."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest

from segnet import losses, paths
from segnet.config import load_config
from segnet.errors import ConfigError

from .procs import run, segnet_env, tiny_overrides


def test_config_choices_are_the_registry():
    for name in losses.LOSSES:
        cfg = load_config(None, [f"train.loss={name}", f"train.finetune_loss={name}"])
        assert cfg.train.loss == cfg.train.finetune_loss == name
    for key in ("train.loss", "train.finetune_loss"):
        with pytest.raises(ConfigError, match=rf"'{key}' must be one of {', '.join(losses.LOSSES)}; got 'focal'"):
            load_config(None, [f"{key}=focal"])


def test_a_loss_defined_with_the_decorator_is_a_valid_config_value():
    @losses.loss
    def zero_test_loss(y_true, logits):
        """Always zero (a test)."""
        return 0.0 * logits

    try:
        assert load_config(None, ["train.loss=zero_test_loss"]).train.loss == "zero_test_loss"
        assert losses.describe("zero_test_loss") == "Always zero (a test)."
    finally:
        losses.LOSSES.pop("zero_test_loss")


def test_a_bad_loss_name_fails_without_importing_tensorflow():
    code = (
        "import sys\n"
        "from segnet.config import load_config\n"
        "from segnet.errors import ConfigError\n"
        "for key in ('train.loss', 'train.finetune_loss'):\n"
        "    try:\n"
        "        load_config(None, [key + '=focal'])\n"
        "    except ConfigError as e:\n"
        "        print(e)\n"
        "assert 'tensorflow' not in sys.modules and 'keras' not in sys.modules, 'TensorFlow was imported'\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=paths.ROOT, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "train.loss" in done.stdout and "train.finetune_loss" in done.stdout


def test_fine_tune_loss_key():
    cfg = load_config()
    assert cfg.train.finetune_loss == "lovasz_hinge" and cfg.train.lovasz_epochs == 0
    with pytest.raises(ConfigError, match="train.lovasz_epochs"):  # every epoch would be fine-tuning
        load_config(None, ["train.epochs=3", "train.lovasz_epochs=3"])
    # ... unless the fine-tune loss is the training loss anyway
    assert load_config(None, ["train.epochs=3", "train.lovasz_epochs=3", "train.loss=bce",
                              "train.finetune_loss=bce"]).train.lovasz_epochs == 3
    assert load_config(None, ["train.epochs=3", "train.lovasz_epochs=3", "train.loss=lovasz_hinge"])


def test_get_loss_registers_with_keras_and_names_the_valid_ones():
    import keras

    for name in losses.LOSSES:
        fn = losses.get_loss(name)
        assert keras.saving.get_registered_object(f"segnet>{name}") is fn
        assert keras.saving.get_registered_name(fn) == f"segnet>{name}"
    with pytest.raises(ConfigError, match="unknown loss 'focal' .valid: bce, dice, bce_dice, lovasz_hinge"):
        losses.get_loss("focal")


def test_what_each_loss_computes():
    rng = np.random.default_rng(0)
    y = (rng.random((2, 8, 8, 1)) > 0.5).astype("float32")
    right, wrong = (2 * y - 1) * 20.0, (1 - 2 * y) * 20.0  # confident logits, right or wrong
    for name in losses.LOSSES:
        good, bad = (np.asarray(losses.get_loss(name)(y, z)) for z in (right, wrong))
        assert good.shape == bad.shape == (2,), name
        assert np.all(good < 1e-3) and np.all(bad > 0.5), (name, good, bad)
    np.testing.assert_allclose(np.asarray(losses.bce_dice(y, wrong)),
                               np.asarray(losses.bce(y, wrong)) + np.asarray(losses.dice(y, wrong)), rtol=1e-6)


@pytest.mark.slow  # the fast suite checks the same on the journey's training (tests/test_journey.py, FINE_TUNE)
def test_training_fine_tunes_with_the_configured_loss(tiny_synth, tmp_path):
    overrides = [*tiny_overrides(tiny_synth, epochs=2), "train.loss=dice", "train.lovasz_epochs=1",
                 "train.finetune_loss=bce"]
    done = run(["train", *overrides], tmp_path, env=segnet_env(tmp_path))
    out = done.stdout + done.stderr
    assert done.returncode == 0, out[-3000:]
    assert "epoch 2: fine-tuning with bce" in out and "lovasz" not in out.replace("lovasz_epochs", "")


def _lovasz_numpy(y, z, penalty, slope):
    """Each image's Lovász loss over ``penalty(errors)`` and its gradient in the logits, from the
    definition (Berman et al. 2018): errors sorted decreasing, weighted by the Jaccard loss's increments."""
    values, grads = [], []
    for yi, zi in zip(y.reshape(len(y), -1).astype(float), z.reshape(len(z), -1).astype(float), strict=True):
        signs = 2 * yi - 1
        errors = 1 - zi * signs
        order = np.argsort(-errors, kind="stable")
        g = yi[order]
        jaccard = 1 - (g.sum() - np.cumsum(g)) / (g.sum() + np.cumsum(1 - g))
        weights = np.empty_like(errors)
        weights[order] = np.diff(jaccard, prepend=0.0)
        values.append(np.dot(penalty(errors), weights))
        grads.append(-signs * slope(errors) * weights)
    return np.array(values), np.array(grads).reshape(z.shape)


def _tf_value_and_grad(name, y, z):
    import tensorflow as tf

    zt = tf.Variable(z)
    with tf.GradientTape() as tape:
        value = losses.get_loss(name)(tf.constant(y), zt)
        total = tf.reduce_sum(value)
    return np.asarray(value), np.asarray(tape.gradient(total, zt))


_PENALTIES = {  # name -> (penalty, its derivative) of the sorted errors
    "lovasz_hinge": (lambda e: np.maximum(e, 0), lambda e: (e > 0).astype(float)),
    "lovasz_elu": (lambda e: np.where(e > 0, e, np.expm1(e)) + 1, lambda e: np.where(e > 0, 1.0, np.exp(e))),
}


@pytest.mark.parametrize("name", sorted(_PENALTIES))
def test_lovasz_losses_match_their_definition(name):
    rng = np.random.default_rng(1)
    y = (rng.random((3, 6, 6, 1)) > 0.6).astype("float32")
    y[2] = 0  # an empty mask: IoU of the empty truth
    z = (rng.normal(size=y.shape) * 2).astype("float32")
    value, grad = _tf_value_and_grad(name, y, z)
    want_value, want_grad = _lovasz_numpy(y, z, *_PENALTIES[name])
    np.testing.assert_allclose(value, want_value, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(grad, want_grad, rtol=1e-5, atol=1e-6)


def test_lovasz_elu_gradients_are_finite_and_differ_from_the_hinge_where_pixels_are_right():
    rng = np.random.default_rng(2)
    y = (rng.random((2, 8, 8, 1)) > 0.5).astype("float32")
    z = (rng.normal(size=y.shape) * 3).astype("float32")
    z[0, 0, :4, 0] = [1e4, -1e4, 0.0, 50.0]  # extreme logits stay finite
    (hinge, g_hinge), (elu, g_elu) = (_tf_value_and_grad(n, y, z) for n in ("lovasz_hinge", "lovasz_elu"))
    assert np.isfinite(elu).all() and np.isfinite(g_elu).all()
    errors = 1 - z * (2 * y - 1)
    right, wrong = errors < 0, errors > 0
    assert right.any() and wrong.any()
    np.testing.assert_allclose(g_elu[wrong], g_hinge[wrong], rtol=1e-5, atol=1e-7)  # same slope past the margin
    assert (g_hinge[right] == 0).all() and (g_elu[right] != 0).any()  # right pixels: the hinge stops pushing
    assert (elu > hinge).all()
    # No pixel right by the margin (logits 0: every error is 1): exactly the hinge + 1.
    zero = np.zeros_like(z)
    np.testing.assert_allclose(_tf_value_and_grad("lovasz_elu", y, zero)[0],
                               _tf_value_and_grad("lovasz_hinge", y, zero)[0] + 1, rtol=1e-6)
