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


def test_training_fine_tunes_with_the_configured_loss(tiny_synth, tmp_path):
    overrides = [*tiny_overrides(tiny_synth, epochs=2), "train.loss=dice", "train.lovasz_epochs=1",
                 "train.finetune_loss=bce"]
    done = run(["train", *overrides], tmp_path, env=segnet_env(tmp_path))
    out = done.stdout + done.stderr
    assert done.returncode == 0, out[-3000:]
    assert "epoch 2: fine-tuning with bce" in out and "lovasz" not in out.replace("lovasz_epochs", "")
