"""scSE, the hypercolumn head, deep supervision and the empty-mask gate (segnet.models.heads).

Every encoder x decoder pair with every head on; gradients reach every head; the gate empties exactly the
images the classifier calls empty; its threshold tuning; a model with every head trains, saves, resumes
(compiled, in a fresh process) and serves through mlflow.pyfunc with the same predictions; the CLI path.
"""

from __future__ import annotations

import subprocess
import sys

import keras
import numpy as np
import pytest
import tensorflow as tf

from segnet import paths
from segnet.config import load_config
from segnet.models import DECODERS, ENCODERS, build_model, heads
from segnet.models.layers import EmptyGate
from tests.procs import run, run_at_once, run_statuses, tiny_overrides

ALL_HEADS = ["model.scse=true", "model.hypercolumn=true", "model.deep_supervision=true"]


def _cfg(*over: str, size: int = 64):
    return load_config(None, [f"data.size={size}", "data.resize_mode=resize", "model.filters=4", "model.depth=3",
                              "train.batch_size=4", *over])


@pytest.mark.parametrize("encoder", list(ENCODERS))
@pytest.mark.parametrize("decoder", list(DECODERS))
def test_every_encoder_and_decoder_takes_every_head(encoder, decoder):
    cfg = _cfg(f"model.encoder={encoder}", f"model.decoder={decoder}", *ALL_HEADS, size=101)
    model = build_model(cfg)
    out = model(np.zeros((2, 101, 101, 1), np.float32))
    assert sorted(out) == ["aux1", "aux2", "logits", "mask", "salt"]
    for name in ("logits", "mask", "aux1", "aux2"):
        assert tuple(out[name].shape) == (2, 101, 101, 1) and out[name].dtype == "float32", name
    assert tuple(out["salt"].shape) == (2, 1)
    assert [f"decoder{s}_scse_out" for s in (1, 2, 3)] == [layer.name for layer in model.layers if layer.name.endswith("_scse_out")]
    assert model.get_layer("hypercolumn").output.shape[1:3] == (101, 101)


def test_each_switch_alone_changes_the_model_and_keeps_one_output():
    plain = build_model(_cfg())
    for switch in ("model.scse=true", "model.hypercolumn=true"):
        m = build_model(_cfg(switch))
        assert m.count_params() > plain.count_params(), switch
        assert not heads.is_supervised(m) and tuple(m.output.shape) == (None, 64, 64, 1)
    assert heads.is_supervised(build_model(_cfg("model.deep_supervision=true")))


def test_gradients_reach_every_head():
    model = build_model(_cfg(*ALL_HEADS))
    losses, weights = heads.compile_losses(model, "bce_dice")
    x = np.random.default_rng(0).random((4, 64, 64, 1), dtype=np.float32)
    y = np.zeros((4, 64, 64, 1), np.float32)
    y[:2, 10:40, 5:30] = 1.0  # two images with salt, two empty
    with tf.GradientTape() as tape:
        out = model(x, training=True)
        total = sum(weights[k] * tf.reduce_mean(losses[k](y, out[k])) for k in losses)
    grads = dict(zip([v.path for v in model.trainable_variables],
                     tape.gradient(total, model.trainable_variables), strict=True))
    for head in ("mask/kernel", "aux1_conv/kernel", "aux2_conv/kernel", "salt/kernel",
                 "decoder1_scse_reduce/kernel", "decoder3_scse_spatial_gate/kernel", "encoder1_1_conv/kernel"):
        g = grads[head]
        assert g is not None and float(tf.reduce_max(tf.abs(g))) > 0, head


def test_salt_weight_weighs_the_classifier_loss_and_nothing_else():
    model = build_model(_cfg("model.deep_supervision=true"))
    _, default = heads.compile_losses(model, "bce_dice")
    _, heavier = heads.compile_losses(model, "bce_dice", 0.5)
    assert default["salt"] == heads.SALT_WEIGHT == 0.05 and heavier["salt"] == 0.5
    assert {k: v for k, v in heavier.items() if k != "salt"} == {k: v for k, v in default.items() if k != "salt"}


def test_mask_losses_skip_empty_images_and_the_classifier_sees_all():
    y = np.zeros((3, 8, 8, 1), np.float32)
    y[0, 2:5, 2:5] = 1.0
    logits = np.full((3, 8, 8, 1), 3.0, np.float32)  # confident salt everywhere: wrong on the empty images
    per_image = heads.NonEmptyMaskLoss("bce").call(y, logits).numpy()
    assert per_image[0] > 0 and per_image[1] == 0 and per_image[2] == 0
    salt = heads.SaltPresenceLoss().call(y, np.array([[4.0], [4.0], [-4.0]], np.float32)).numpy()
    np.testing.assert_allclose(salt, [np.log1p(np.exp(-4.0)), np.log1p(np.exp(4.0)), np.log1p(np.exp(-4.0))], rtol=1e-5)


def test_gate_empties_a_mask_when_the_classifier_says_empty_and_leaves_it_otherwise():
    gate = EmptyGate(threshold=0.5)
    logits = np.random.default_rng(1).normal(size=(3, 5, 5, 1)).astype(np.float32)
    salt = np.array([[2.0], [-2.0], [0.1]], np.float32)  # p = 0.88, 0.12, 0.52
    out = gate([logits, salt]).numpy()
    np.testing.assert_array_equal(out[0], logits[0])
    assert (out[1] == EmptyGate.EMPTY_LOGIT).all()
    np.testing.assert_array_equal(out[2], logits[2])
    gate.threshold.assign(0.6)
    assert (gate([logits, salt]).numpy()[2] == EmptyGate.EMPTY_LOGIT).all()


def _fixed_outputs(mask: np.ndarray, salt_probabilities: list[float]):
    """A stand-in deep-supervision model, called as segnet calls a Keras model in inference
    (segnet.models.predict.forward): these ungated mask logits and salt probabilities for any input, and a
    real EmptyGate (threshold 0.5) as its ``logits`` layer."""
    p = np.array(salt_probabilities)[:, None]

    class Fixed:
        gate = EmptyGate()

        def __call__(self, x, training=False):
            return {"mask": mask, "salt": np.log(p / (1 - p)).astype(np.float32)}

        def get_layer(self, name):
            return self.gate

    model = Fixed()
    model.gate.build(None)
    return model


def test_tune_gate_picks_the_threshold_that_maximises_the_score():
    """Four images: two with salt (the mask head finds them), two empty where the mask head sees salt.
    Salt probabilities 0.9, 0.7 (salt) and 0.3, 0.6 (empty): gating below 0.61..0.70 keeps both true
    masks and empties both empty images (score 1.0); the lowest such grid threshold is 0.61."""

    model = _fixed_outputs(np.full((4, 101, 101, 1), 5.0, np.float32), [0.9, 0.7, 0.3, 0.6])
    truth = np.zeros((4, 101, 101, 1), np.float32)
    truth[:2] = 1.0
    got = heads.tune_gate(model, np.zeros((4, 101, 101, 1), np.float32), truth, "resize", 4)
    assert got["gate_threshold"] == pytest.approx(0.61)
    assert got["val_tgs_map_gated"] == 1.0 and got["val_tgs_map_ungated"] == 0.5
    assert got["gate_emptied"] == 0.5 and got["gate_false_empty"] == 0.0
    assert got["gate_auc"] == 1.0 and got["val_tgs_map_perfect_gate"] == 1.0
    assert float(model.gate.threshold.numpy()) == pytest.approx(0.61)


def test_the_gate_logs_what_a_perfect_classifier_would_score():
    """The mask head finds salt image 0, misses salt image 1 and draws salt on both empty images; the
    classifier ranks empty image 3 above salt image 0 (AUC 3/4). A perfect gate would score 0.75 (empty
    images emptied, salt images as drawn); the best threshold (0.11: empties image 2 only) scores 0.5."""

    mask = np.full((4, 101, 101, 1), 5.0, np.float32)
    mask[1] = -5.0  # salt image 1 missed
    model = _fixed_outputs(mask, [0.35, 0.8, 0.105, 0.4])
    truth = np.zeros((4, 101, 101, 1), np.float32)
    truth[:2] = 1.0
    got = heads.tune_gate(model, np.zeros((4, 101, 101, 1), np.float32), truth, "resize", 4)
    assert got["gate_auc"] == pytest.approx(0.75)
    assert got["val_tgs_map_perfect_gate"] == pytest.approx(0.75)
    assert got["val_tgs_map_gated"] == pytest.approx(0.5) and got["gate_threshold"] == pytest.approx(0.11)
    assert np.isnan(heads.salt_auc(np.array([0.2, 0.9]), np.array([True, True])))


def test_flip_tta_gates_on_the_mean_salt_probability():
    """The classifier is sure of salt in the plain view (p 0.88) and unsure in the flipped one (p 0.27):
    the mean logit (p 0.62) keeps the mask at gate threshold 0.5, where averaging the two gated outputs
    emptied it; an image both views call empty stays empty. The gate is tuned on the same TTA views."""
    from segnet.inference import predict_logits

    class Asymmetric:  # sees salt when the image's left half is bright; draws the image as the mask
        output_names = ["logits", "mask", "salt"]

        def __call__(self, x, training=False):
            x = np.asarray(x, np.float32)
            left = x[:, :, : x.shape[2] // 2].mean(axis=(1, 2, 3))
            salt = np.where(left > 0.5, 2.0, -1.0)
            salt = np.where(x.mean(axis=(1, 2, 3)) < 0.01, -4.0, salt)  # a black image: no salt either way
            mask = (x - 0.5) * 10.0
            gated = np.where((1 / (1 + np.exp(-salt)) >= 0.5)[:, None, None, None], mask, EmptyGate.EMPTY_LOGIT)
            return {"logits": gated, "mask": mask, "salt": salt[:, None].astype(np.float32)}

        def get_layer(self, name):
            return self.gate

    model = Asymmetric()
    model.gate = EmptyGate(threshold=0.5)
    model.gate.build(None)
    images = np.zeros((2, 8, 8, 1), np.float32)
    images[0, :, :4] = 1.0  # bright left half: salt in the plain view, not in the flipped one
    z = predict_logits(model, images, 2, tta=True)
    expected = 0.5 * ((images[0] - 0.5) * 10.0 + ((images[0, :, ::-1] - 0.5) * 10.0)[:, ::-1])
    np.testing.assert_allclose(z[0], expected)  # kept: the mean of the two views' mask logits
    assert (z[1] == EmptyGate.EMPTY_LOGIT).all()
    mask, salt = heads.mask_and_salt(model, images, 2, tta=True)
    np.testing.assert_allclose(salt, [0.5, -4.0])
    np.testing.assert_allclose(heads.mask_and_salt(model, images, 2, tta=False)[1], [2.0, -4.0])


def test_a_compiled_model_with_every_head_reloads_in_a_fresh_process(tmp_path):
    """What resume does: the checkpoint reloads compiled, its losses registered by importing segnet.models."""
    from segnet.train import compile_model

    model = build_model(_cfg(*ALL_HEADS))
    compile_model(model, keras.optimizers.Adam(1e-3), "lovasz_hinge")
    model.get_layer("logits").threshold.assign(0.37)
    model.save(tmp_path / "m.keras")
    code = ("import keras, segnet.models as m; m.register_with_keras(); from segnet.models import heads; "
            f"r = keras.models.load_model({str(tmp_path / 'm.keras')!r}); "
            "print(heads.loss_name_of(r), round(heads.gate_threshold(r), 2), sorted(r.loss))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=paths.ROOT, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    assert out.stdout.split("\n")[-2] == "lovasz_hinge 0.37 ['aux1', 'aux2', 'mask', 'salt']"


EVERY_COMPONENT = [*ALL_HEADS, "model.encoder=resnet", "train.schedule=sgdr", "train.cycles=2",
                   "train.finetune_loss=lovasz_elu", "train.lovasz_epochs=1"]


def test_train_with_every_component_then_predict_evaluate_and_pyfunc_agree(tiny_synth, tmp_path):
    """The CLI trains a model with every issue-14 component on (resnet encoder, every head, sgdr snapshots,
    lovasz_elu): each snapshot's gate is tuned, saved and logged; predict and evaluate use the ensemble;
    the logged pyfunc model predicts the mean of the snapshots' gated logits."""
    import mlflow
    from mlflow.tracking import MlflowClient

    from segnet.inference import Predictor
    from segnet.metrics.segmentation import sigmoid
    from tests.procs import store_uri

    over = [o for o in tiny_overrides(tiny_synth) if o != "tracking.log_model=false"] + EVERY_COMPONENT
    trained = run(["train", *over], tmp_path)
    assert trained.returncode == 0, trained.stdout[-3000:] + trained.stderr[-3000:]
    assert trained.stdout.count("empty-mask gate: threshold") == 3  # best.keras and both snapshots
    assert "fine-tuning with lovasz_elu" in trained.stdout
    (run_id,) = run_statuses(tmp_path)
    client = MlflowClient(store_uri(tmp_path))
    metrics, params = client.get_run(run_id).data.metrics, client.get_run(run_id).data.params
    for key in ("gate_threshold", "val_tgs_map_ungated", "val_tgs_map_gated", "gate_emptied", "gate_auc",
                "val_tgs_map_perfect_gate", "snapshot0_gate_threshold", "snapshot1_gate_threshold"):
        assert key in metrics, key
    assert metrics["snapshots"] == 2
    assert params["model.deep_supervision"] == "True" and params["model.encoder"] == "resnet"

    predicted, evaluated = run_at_once([  # two independent commands, each its own process, at once
        ["predict", "--run-id", run_id, "--images", str(tiny_synth / "train" / "images"),
         "--out", str(tmp_path / "sub.csv")],
        ["evaluate", "--run-id", run_id]], tmp_path)
    assert predicted.returncode == 0, predicted.stderr[-3000:]
    assert "snapshot ensemble of 2" in predicted.stdout + predicted.stderr
    assert (tmp_path / "sub.csv").read_text().startswith("id,rle_mask")
    assert evaluated.returncode == 0, evaluated.stderr[-3000:]

    cfg = load_config(None, over)
    x = np.random.default_rng(0).random((3, 101, 101, 1), dtype=np.float32)
    logits = []
    for k in range(2):
        snap = keras.models.load_model(tmp_path / "runs" / run_id / f"snapshot_c{k}.keras", compile=False)
        assert heads.gate_threshold(snap) == pytest.approx(metrics[f"snapshot{k}_gate_threshold"])
        logits.append(Predictor.from_config(snap, cfg).logits(x))
    mlflow.set_tracking_uri(store_uri(tmp_path))
    served = mlflow.pyfunc.load_model(f"runs:/{run_id}/model").predict(x)
    np.testing.assert_allclose(served["probability"], sigmoid(np.mean(logits, axis=0)), rtol=1e-4, atol=1e-6)
    assert "RUNNING" not in run_statuses(tmp_path).values()


def test_head_switches_default_off_and_keep_old_hashes():
    """The keys exist with their defaults off, and a config that sets none keeps its old hash (resume)."""
    cfg = load_config(None, [])
    assert (cfg.model.scse, cfg.model.hypercolumn, cfg.model.deep_supervision) == (False, False, False)
    assert cfg.hash() == load_config(None, ["model.scse=false"]).hash()
    assert cfg.hash() != load_config(None, ["model.scse=true"]).hash()


def test_variant_label_names_the_encoder_and_the_heads():
    assert load_config(None, []).variant() == "transposed_k3"
    assert load_config(None, ["model.encoder=resnet", *ALL_HEADS]).variant() == \
        "transposed_k3+resnet+scse+hypercolumn+deep_supervision"
    assert load_config(None, ["model.scse=true", "tracking.variant=mine"]).variant() == "mine"
