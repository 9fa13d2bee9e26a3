"""segnet.plots: every picture renders on tiny inputs and saves a non-empty PNG."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from matplotlib.figure import Figure

from segnet import plots


def _png_ok(path) -> bool:
    data = path.read_bytes()
    return len(data) > 1000 and data[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.fixture
def tiny():
    rng = np.random.default_rng(0)
    masks = np.zeros((4, 24, 24, 1), np.float32)
    masks[1, 5:15, 4:20] = 1
    masks[2, 10:, :] = 1
    masks[3, 3:8, 3:8] = 1
    y, x = np.mgrid[:24, :24]
    logits = 4 * (2 * masks[..., 0] - 1) + 0.5 * (-1.0) ** (x + y) + rng.normal(0, 0.1, (4, 24, 24))
    images = rng.random((4, 24, 24, 1)).astype(np.float32)
    return images, masks, logits


def test_plot_spectra(tmp_path, tiny):
    _, masks, logits = tiny
    fig = plots.plot_spectra(logits, masks)
    assert isinstance(fig, Figure)
    p = plots.save(fig, tmp_path / "sub" / "spectra.png")
    assert _png_ok(p)


def test_plot_spectra_odd_size_path_argument(tmp_path):
    rng = np.random.default_rng(1)
    fig = plots.plot_spectra(
        rng.normal(size=(2, 101, 101)), rng.random((2, 101, 101)) > 0.5, path=tmp_path / "s.png"
    )
    assert isinstance(fig, Figure) and _png_ok(tmp_path / "s.png")


def test_plot_const_response(tmp_path):
    rng = np.random.default_rng(2)
    maps = [rng.normal(size=(32, 32, 4)), np.ones((64, 64, 4)), np.ones((16, 16))]
    plots.plot_const_response(maps, scores=[0.4, 0.0, 0.0], path=tmp_path / "c.png", channels=2)
    assert _png_ok(tmp_path / "c.png")
    plots.plot_const_response([], path=tmp_path / "empty.png")
    assert _png_ok(tmp_path / "empty.png")


def test_plot_const_response_from_artifacts(tmp_path):
    keras = pytest.importorskip("keras")
    from segnet.metrics.artifacts import artifact_const_response

    keras.utils.set_random_seed(0)
    inp = keras.Input((8, 8, 2))
    out = keras.layers.Conv2DTranspose(3, 3, strides=2, padding="same", name="decoder1_up")(inp)
    r = artifact_const_response(keras.Model(inp, out), needs_indices=False, return_maps=True)
    plots.save(plots.plot_const_response(r["maps"], r["per_stage"]), tmp_path / "c.png")
    assert _png_ok(tmp_path / "c.png")


def test_plot_overlays(tmp_path, tiny):
    images, masks, logits = tiny
    pred = logits > 0.3
    fig = plots.plot_overlays(images, masks, pred, ["a", "b", "c", "d"], [1.0, 0.5, 0.3, 0.0], "worst")
    assert _png_ok(plots.save(fig, tmp_path / "o.png"))
    fig = plots.plot_overlays(images[:1, ..., 0], masks[:1, ..., 0], pred[:1], ["x"], None, "")
    assert _png_ok(plots.save(fig, tmp_path / "o1.png"))


def test_plot_learning_curves(tmp_path):
    h = {
        "loss": [0.9, 0.6, 0.5],
        "val_loss": [1.0, 0.7, 0.65],
        "val_iou": [0.3, 0.5, 0.6],
        "val_tgs_map": [0.2, 0.4, 0.55],
        "lr": [1e-3, 1e-3, 5e-4],
        "epoch_time_s": [3, 3, 3],
    }
    assert _png_ok(plots.save(plots.plot_learning_curves(h), tmp_path / "lc.png"))
    assert _png_ok(plots.save(plots.plot_learning_curves({"loss": [1.0]}), tmp_path / "lc1.png"))


def _summary():
    return pd.DataFrame(
        {
            "variant": ["transposed", "upsampling", "pixel_shuffle"],
            "tgs_map_mean": [0.70, 0.74, 0.72],
            "tgs_map_std": [0.02, 0.01, np.nan],
            "diff_mean": [0.0, 0.04, 0.02],
            "diff_lo": [0.0, 0.01, -0.01],
            "diff_hi": [0.0, 0.07, 0.05],
            "artifact_periodic_energy_mean": [0.05, 0.001, 0.01],
            "artifact_const_response_mean": [0.4, 0.0, 0.1],
        }
    )


def test_plot_ablation(tmp_path):
    df = _summary()
    assert _png_ok(plots.save(plots.plot_ablation(df, reference="transposed"), tmp_path / "a.png"))
    minimal = df[["variant", "tgs_map_mean", "tgs_map_std"]]
    assert _png_ok(plots.save(plots.plot_ablation(minimal), tmp_path / "a2.png"))
    with_final = df.assign(tgs_map_tuned_mean=[0.74, 0.80, 0.77], tgs_map_tuned_std=0.0)
    fig = plots.plot_ablation(with_final, reference="transposed")
    assert len(fig.axes[0].patches) == 2 * len(df)  # best-epoch and final bars side by side
    assert _png_ok(plots.save(fig, tmp_path / "a3.png"))


def test_plot_bootstrap_ci(tmp_path):
    df = _summary()
    df.loc[0, ["diff_mean", "diff_lo", "diff_hi"]] = np.nan
    assert _png_ok(plots.save(plots.plot_bootstrap_ci(df, reference="transposed"), tmp_path / "b.png"))


def test_plot_bench(tmp_path):
    df = pd.DataFrame(
        {
            "model": ["keras_unet", "transposed"],
            "train_images_per_s": [120.0, 100.5],
            "infer_images_per_s": [800.0, np.nan],
        }
    )
    assert _png_ok(plots.save(plots.plot_bench(df), tmp_path / "bench.png"))
