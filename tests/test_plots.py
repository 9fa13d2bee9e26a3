"""segnet.plots: every picture draws what it says (panels, titles, data, colours) and saves a PNG.

The plot functions return matplotlib Figures; the tests read what is drawn from them (axes, titles,
image arrays, line and bar data, legend labels) and, for the error map, the colour of rendered pixels.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from matplotlib.colors import to_rgba
from matplotlib.container import BarContainer
from matplotlib.figure import Figure

from segnet import plots


def _png_ok(path) -> bool:
    data = path.read_bytes()
    return len(data) > 1000 and data[:8] == b"\x89PNG\r\n\x1a\n"


def _titles(fig: Figure) -> list[str]:
    return [ax.get_title() for ax in fig.axes]


def _suptitle(fig: Figure) -> str:
    return fig.get_suptitle()


def _legend(ax) -> list[str]:
    legend = ax.get_legend()
    return [t.get_text() for t in legend.get_texts()] if legend is not None else []


def _lines(ax) -> dict[str, np.ndarray]:
    return {line.get_label(): np.asarray(line.get_ydata(), float) for line in ax.get_lines()}


def _heights(ax) -> np.ndarray:
    return np.array([p.get_height() for p in ax.patches], float)


def _pixel(fig: Figure, ax, x: float, y: float) -> tuple[float, ...]:
    """RGB (0..1) of the rendered figure at data point (x, y) of ``ax``."""
    fig.canvas.draw()
    rgba = np.asarray(fig.canvas.buffer_rgba())
    px, py = ax.transData.transform((x, y))
    return tuple(rgba[int(round(rgba.shape[0] - py)), int(round(px)), :3] / 255.0)


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
    assert len(fig.axes) == 3  # predicted, truth, shared colourbar
    pred_ax, truth_ax, _ = fig.axes
    assert [pred_ax.get_title(), truth_ax.get_title()] == ["predicted logits", "truth (2·mask − 1)"]
    assert _suptitle(fig) == "Mean log-power spectrum (DC at centre)"
    spec_p, spec_t = (np.asarray(ax.images[0].get_array()) for ax in (pred_ax, truth_ax))
    np.testing.assert_allclose(spec_p, plots.mean_log_power_spectrum(logits))
    np.testing.assert_allclose(spec_t, plots.mean_log_power_spectrum(2.0 * masks - 1.0))
    # The checkerboard added to the logits is energy at the Nyquist corner (fftshifted: index 0, 0) that the
    # truth does not have.
    assert spec_p[0, 0] > spec_t[0, 0] + 2
    for ax in (pred_ax, truth_ax):  # the N/4 lattice: 4x4 points less the DC, in signed frequencies
        assert _legend(ax) == ["N/4 lattice"]
        offsets = {tuple(p) for p in np.asarray(ax.collections[0].get_offsets())}
        assert len(offsets) == 15 and (0, 0) not in offsets
        assert offsets == {(v, u) for u in (-12, -6, 0, 6) for v in (-12, -6, 0, 6)} - {(0, 0)}
    p = plots.save(fig, tmp_path / "sub" / "spectra.png")
    assert _png_ok(p)


def test_plot_spectra_odd_size_path_argument(tmp_path):
    rng = np.random.default_rng(1)
    fig = plots.plot_spectra(
        rng.normal(size=(2, 101, 101)), rng.random((2, 101, 101)) > 0.5, path=tmp_path / "s.png", title="odd"
    )
    assert isinstance(fig, Figure) and _png_ok(tmp_path / "s.png")
    assert _suptitle(fig) == "odd"
    for ax in fig.axes[:2]:  # cropped to a multiple of 4, centred on DC
        assert ax.images[0].get_array().shape == (100, 100)
        assert ax.images[0].get_extent() == pytest.approx((-50.5, 49.5, 49.5, -50.5))


def test_plot_const_response(tmp_path):
    rng = np.random.default_rng(2)
    maps = [rng.normal(size=(32, 32, 4)), np.ones((64, 64, 4)), np.ones((16, 16))]
    fig = plots.plot_const_response(maps, scores=[0.4, 0.0, 0.0], path=tmp_path / "c.png", channels=2)
    assert _png_ok(tmp_path / "c.png")
    panels = [ax for ax in fig.axes if ax.images]
    assert len(panels) == 3 and len(fig.axes) == 6  # one row (the 2-D map has one channel), a colourbar each
    assert [ax.get_title() for ax in panels] == ["stage 1  (score 0.4)", "stage 2  (score 0)", "stage 3  (score 0)"]
    drawn = [np.asarray(ax.images[0].get_array()) for ax in panels]
    np.testing.assert_allclose(drawn[0], maps[0][..., 0] / np.abs(maps[0][..., 0]).mean())  # normalised by mean|.|
    np.testing.assert_array_equal(drawn[1], np.ones((64, 64)))  # flat response: one uniform colour
    assert drawn[2].shape == (16, 16)

    fig = plots.plot_const_response(maps[:2], channels=2)  # both have 4 channels: two rows
    assert sorted(ax.get_title() for ax in fig.axes if ax.images) == [
        "stage 1, ch 0", "stage 1, ch 1", "stage 2, ch 0", "stage 2, ch 1"
    ]

    fig = plots.plot_const_response([], path=tmp_path / "empty.png")
    assert _png_ok(tmp_path / "empty.png")
    assert len(fig.axes) == 1 and not fig.axes[0].images and not fig.axes[0].axison
    assert [t.get_text() for t in fig.axes[0].texts] == ["no decoder stages"]


def test_plot_const_response_from_artifacts(tmp_path):
    keras = pytest.importorskip("keras")
    from segnet.metrics.artifacts import artifact_const_response

    keras.utils.set_random_seed(0)
    inp = keras.Input((8, 8, 2))
    out = keras.layers.Conv2DTranspose(3, 3, strides=2, padding="same", name="decoder1_up")(inp)
    r = artifact_const_response(keras.Model(inp, out), needs_indices=False, return_maps=True)
    fig = plots.plot_const_response(r["maps"], r["per_stage"])
    (panel,) = [ax for ax in fig.axes if ax.images]
    assert panel.get_title() == f"stage 1  (score {r['per_stage'][0]:.3g})"
    ch = np.asarray(r["maps"][0], float)[..., 0]
    np.testing.assert_allclose(panel.images[0].get_array(), ch / np.abs(ch).mean())
    # A k=3, s=2 transposed conv answers a constant with a periodic pattern, not a flat map.
    assert np.ptp(np.asarray(panel.images[0].get_array())[4:-4, 4:-4]) > 1e-3
    plots.save(fig, tmp_path / "c.png")
    assert _png_ok(tmp_path / "c.png")


def test_plot_overlays(tmp_path, tiny):
    images, masks, _ = tiny
    pred = masks[..., 0].astype(bool).copy()
    pred[1, 0:4, 0:4] = True  # false positive (outside the truth)
    pred[1, 6:10, 5:9] = False  # false negative (inside the truth)
    fig = plots.plot_overlays(images, masks, pred, ["a", "b", "c", "d"], [1.0, 0.5, 0.3, 0.0], "worst")
    assert len(fig.axes) == 16  # one row of four panels per image
    assert _titles(fig)[:4] == ["image", "truth", "prediction", "errors (FP red, FN blue)"]
    assert _suptitle(fig) == "worst"
    rows = [fig.axes[4 * i: 4 * i + 4] for i in range(4)]
    assert [r[0].get_ylabel() for r in rows] == ["a\nscore 1.000", "b\nscore 0.500", "c\nscore 0.300", "d\nscore 0.000"]
    np.testing.assert_array_equal(rows[1][0].images[0].get_array(), images[1, ..., 0])
    np.testing.assert_array_equal(rows[1][2].images[0].get_array(), pred[1])
    assert [len(r[1].collections) > 0 for r in rows] == [False, True, True, True]  # truth contour where one exists
    err = np.asarray(rows[1][3].images[0].get_array())
    np.testing.assert_allclose(err[1, 1], (0.9, 0.1, 0.1))  # FP red
    np.testing.assert_allclose(err[7, 6], (0.1, 0.3, 0.95))  # FN blue
    np.testing.assert_allclose(err[12, 12], (1, 1, 1))  # TP white
    np.testing.assert_allclose(err[20, 20], (0, 0, 0))  # TN black
    # ...and that is what is rendered: the centre of each region has its colour in the picture.
    assert _pixel(fig, rows[1][3], 1.5, 1.5) == pytest.approx((0.9, 0.1, 0.1), abs=0.02)
    assert _pixel(fig, rows[1][3], 6.5, 7.5) == pytest.approx((0.1, 0.3, 0.95), abs=0.02)
    assert _pixel(fig, rows[0][3], 12, 12) == pytest.approx((0, 0, 0), abs=0.02)  # image "a": empty, predicted empty
    assert _png_ok(plots.save(fig, tmp_path / "o.png"))

    fig = plots.plot_overlays(images[:1, ..., 0], masks[:1, ..., 0], pred[:1], ["x"], None, "")
    assert len(fig.axes) == 4 and fig.axes[0].get_ylabel() == "x" and _suptitle(fig) == "Predictions"
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
    fig = plots.plot_learning_curves(h)
    assert _titles(fig) == ["loss", "score", "learning rate"]
    drawn = [_lines(ax) for ax in fig.axes]
    assert [sorted(d) for d in drawn] == [["loss", "val_loss"], ["val_iou", "val_tgs_map"], ["lr"]]
    for d in drawn:  # each curve is its history, by epoch 1..n; epoch_time_s is drawn nowhere
        for key, y in d.items():
            np.testing.assert_allclose(y, h[key])
    assert [list(line.get_xdata()) for line in fig.axes[0].get_lines()] == [[1, 2, 3]] * 2
    assert [_legend(ax) for ax in fig.axes] == [["loss", "val_loss"], ["val_iou", "val_tgs_map"], ["lr"]]
    assert [ax.get_yscale() for ax in fig.axes] == ["linear", "linear", "log"]
    assert _png_ok(plots.save(fig, tmp_path / "lc.png"))

    fig = plots.plot_learning_curves({"loss": [1.0]})
    assert list(_lines(fig.axes[0])) == ["loss"] and not fig.axes[1].get_lines() and not fig.axes[2].get_lines()
    assert [[t.get_text() for t in ax.texts] for ax in fig.axes] == [[], ["not recorded"], ["not recorded"]]
    assert _png_ok(plots.save(fig, tmp_path / "lc1.png"))


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
    fig = plots.plot_ablation(df, reference="transposed")
    assert _titles(fig) == ["val TGS mAP (mean ± std over seeds)", "artifact periodic energy",
                            "artifact const response"]
    for ax, col in zip(fig.axes, ("tgs_map_mean", "artifact_periodic_energy_mean", "artifact_const_response_mean"),
                       strict=True):
        np.testing.assert_allclose(_heights(ax), df[col])
        assert [t.get_text() for t in ax.get_xticklabels()] == list(df["variant"])
    colors = [p.get_facecolor() for p in fig.axes[0].patches]
    assert colors == [to_rgba("tab:orange"), to_rgba("tab:blue"), to_rgba("tab:blue")]  # the reference stands out
    (bars,) = [c for c in fig.axes[0].containers if isinstance(c, BarContainer)]
    (err,) = bars.errorbar.lines[2]  # error bars: ± std, none where std is NaN
    np.testing.assert_allclose([seg[1, 1] - seg[0, 1] for seg in err.get_segments()], [0.04, 0.02, 0.0], atol=1e-9)
    assert _png_ok(plots.save(fig, tmp_path / "a.png"))

    minimal = df[["variant", "tgs_map_mean", "tgs_map_std"]]
    fig = plots.plot_ablation(minimal)
    assert len(fig.axes) == 1 and {p.get_facecolor() for p in fig.axes[0].patches} == {to_rgba("tab:blue")}
    assert _png_ok(plots.save(fig, tmp_path / "a2.png"))

    with_final = df.assign(tgs_map_tuned_mean=[0.74, 0.80, 0.77], tgs_map_tuned_std=0.0)
    fig = plots.plot_ablation(with_final, reference="transposed")
    assert len(fig.axes[0].patches) == 2 * len(df)  # best-epoch and final bars side by side
    np.testing.assert_allclose(_heights(fig.axes[0]), [0.70, 0.74, 0.72, 0.74, 0.80, 0.77])
    assert _legend(fig.axes[0]) == ["best epoch (t=0.5)", "final (flip TTA, tuned t)"]
    assert _png_ok(plots.save(fig, tmp_path / "a3.png"))


def test_plot_bootstrap_ci(tmp_path):
    df = _summary()
    df.loc[0, ["diff_mean", "diff_lo", "diff_hi"]] = np.nan
    fig = plots.plot_bootstrap_ci(df, reference="transposed")
    (ax,) = fig.axes
    assert [t.get_text() for t in ax.get_yticklabels()] == ["transposed (reference)", "upsampling", "pixel_shuffle"]
    zero, *drawn = ax.get_lines()
    assert list(zero.get_xdata()) == [0, 0]  # the reference line
    # the reference row (NaN) draws nothing; each other row a CI segment and its mean, at its own height
    assert [(list(line.get_xdata()), list(line.get_ydata())) for line in drawn] == [
        ([0.01, 0.07], [1, 1]), ([0.04], [1]), ([-0.01, 0.05], [0, 0]), ([0.02], [0]),
    ]
    colors = [to_rgba(line.get_color()) for line in drawn]
    assert colors == [to_rgba("tab:green")] * 2 + [to_rgba("tab:blue")] * 2  # significant better; CI crosses 0
    assert _png_ok(plots.save(fig, tmp_path / "b.png"))


def test_plot_bench(tmp_path):
    df = pd.DataFrame(
        {
            "model": ["keras_unet", "transposed"],
            "train_images_per_s": [120.0, 100.4],
            "infer_images_per_s": [800.0, np.nan],
        }
    )
    fig = plots.plot_bench(df)
    (ax,) = fig.axes
    assert _legend(ax) == ["train", "inference"]
    train, infer = ax.containers
    np.testing.assert_allclose([b.get_height() for b in train], [120.0, 100.4])
    assert [b.get_height() for b in infer][0] == 800.0 and np.isnan([b.get_height() for b in infer][1])
    assert [t.get_text() for t in ax.texts] == ["120", "100", "800"]  # values written on the bars, not the NaN
    assert [t.get_text() for t in ax.get_xticklabels()] == ["keras_unet", "transposed"]
    assert _png_ok(plots.save(fig, tmp_path / "bench.png"))


def _widths(ax) -> np.ndarray:
    return np.array([p.get_width() for p in ax.patches], float)


def test_plot_score_gaps(tmp_path):
    # five images: empty and right (1), empty given a mask (0), salt predicted empty (0), 5% salt scored 0.5,
    # 60% salt scored 0.8
    scores = pd.DataFrame({"tgs": [1.0, 0.0, 0.0, 0.5, 0.8], "coverage": [0, 0, 0.3, 0.05, 0.6],
                           "pred_coverage": [0, 0.01, 0, 0.04, 0.55]})
    fig = plots.plot_score_gaps(scores)
    gaps_ax, cls_ax = fig.axes[:2]
    assert _titles(fig)[:2] == ["where the score is lost (5 images)", "score by coverage class"]
    # the score, then fp, fn, small, medium, large stacked after it: they fill the bar to 1
    np.testing.assert_allclose(_widths(gaps_ax), [0.46, 0.2, 0.2, 0.1, 0.0, 0.04])
    np.testing.assert_allclose([p.get_x() for p in gaps_ax.patches], [0, 0.46, 0.66, 0.86, 0.96, 0.96])
    assert _legend(gaps_ax)[:3] == ["tgs_map (scored)", "lost: salt predicted on an empty image",
                                   "lost: salt image predicted empty"]
    # classes: empty (2 images, mean 0.5), 0-10% (0.5), 20-30% (0), 50-60% (0.8); the others are empty bars
    heights = _heights(cls_ax)
    np.testing.assert_allclose(heights[[0, 1, 3, 6]], [0.5, 0.5, 0.0, 0.8])
    assert [t.get_text() for t in cls_ax.texts][:2] == ["n=2", "n=1"]
    # 30 % salt is class 3 (20-30 %), as the folds classify it (data.folds.coverage_class), none in 30-40 %
    assert [t.get_text() for t in cls_ax.texts][3:5] == ["n=1", "n=0"]
    assert _png_ok(plots.save(fig, tmp_path / "g.png"))


def test_plot_ablation_gaps(tmp_path):
    df = pd.DataFrame({"variant": ["a", "b"], "final_mean": [0.7, 0.8],
                       "gap_empty_fp_mean": [0.1, 0.05], "gap_empty_fn_mean": [0.05, 0.05],
                       "gap_small_mean": [0.05, 0.04], "gap_medium_mean": [0.05, 0.03],
                       "gap_large_mean": [0.05, np.nan]})  # a run logged before the gaps were: NaN draws 0
    fig = plots.plot_ablation_gaps(df)
    (ax,) = fig.axes
    assert [t.get_text() for t in ax.get_yticklabels()] == ["a", "b"]
    # bars are drawn part by part (score, fp, fn, small, medium, large), each for a then b
    np.testing.assert_allclose(_widths(ax), [0.7, 0.8, 0.1, 0.05, 0.05, 0.05, 0.05, 0.04, 0.05, 0.03, 0.05, 0.0])
    assert [p.get_y() + p.get_height() / 2 for p in ax.patches][:2] == [1.0, 0.0]  # a on top
    assert _png_ok(plots.save(fig, tmp_path / "ag.png"))
