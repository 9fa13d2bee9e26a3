"""All of segnet's pictures (matplotlib, Agg backend; no display needed).

Every function returns a :class:`matplotlib.figure.Figure`; pass ``path=`` to also save it as a PNG
(the parent folder is created). :func:`save` saves and closes any figure.

Table inputs (pandas DataFrames; the ablation and bench code write these columns):

* :func:`plot_ablation`: ``variant, tgs_map_mean, tgs_map_std`` and, when present,
  ``artifact_periodic_energy_mean``, ``artifact_const_response_mean`` (optional ``_std`` columns
  give error bars there too). ``tgs_map_*`` is the mean/std over replicates (seeds, folds) of
  ``best_val_tgs_map``; ``final_mean, final_std`` (else ``tgs_map_tuned_*``) the final score's, drawn
  beside it; with ``significant`` and ``interval`` the final bars are marked ``*`` / ``**``.
* :func:`plot_bootstrap_ci`: ``variant, diff_mean, diff_lo, diff_hi`` — the paired-bootstrap CI of
  the variant's final score minus the reference's (the reference row may have NaN or zeros; it is drawn
  as the zero line and labelled "(reference)" when ``reference=`` is given). Optional ``interval``
  (``images`` | ``images+training``: a dotted segment covers image sampling only, a solid one training
  noise too) and ``p_best`` (shown in the labels).
* :func:`plot_bench`: ``model, train_images_per_s, infer_images_per_s``.
* :func:`plot_score_gaps`: a per-image score table (``segmentation.score_table``: ``tgs, coverage,
  pred_coverage``); :func:`plot_ablation_gaps`: ``variant`` and ``gap_<part>_mean`` per part of
  ``segmentation.score_gaps`` (``final_mean`` or ``tgs_map_tuned_mean`` for the score itself).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402

__all__ = [
    "save",
    "mean_log_power_spectrum",
    "plot_spectra",
    "plot_const_response",
    "plot_overlays",
    "plot_learning_curves",
    "plot_ablation",
    "plot_bootstrap_ci",
    "plot_bench",
    "plot_score_gaps",
    "plot_ablation_gaps",
]


def save(fig: Figure, path: str | Path, dpi: int = 110) -> Path:
    """Save ``fig`` as PNG at ``path`` (folders created) and close it. Returns the path."""
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(p, dpi=dpi, bbox_inches="tight")
    plt.close(fig)
    return p


def _finish(fig: Figure, path: str | Path | None) -> Figure:
    if path is not None:
        p = Path(path)
        p.parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(p, dpi=110, bbox_inches="tight")
    return fig


def _maps(x) -> np.ndarray:
    a = np.asarray(x, dtype=np.float64)
    if a.ndim == 4 and a.shape[-1] == 1:
        a = a[..., 0]
    if a.ndim == 2:
        a = a[None]
    return a


# ---------------------------------------------------------------------------------------- spectra


def mean_log_power_spectrum(maps) -> np.ndarray:
    """log10 of the mean power spectrum (mean removed per map), fftshifted; maps cropped to ×4."""
    from segnet.metrics.artifacts import crop_to_multiple

    z = crop_to_multiple(_maps(maps)).astype(np.float64)
    z = z - z.mean(axis=(1, 2), keepdims=True)
    power = (np.abs(np.fft.fft2(z, axes=(1, 2))) ** 2).mean(axis=0)
    return np.fft.fftshift(np.log10(power + 1e-12))


def plot_spectra(pred_logits, masks, path: str | Path | None = None, title: str | None = None) -> Figure:
    """Mean log-power spectrum of predicted logits beside that of the truth (2·mask − 1).

    The N/4 lattice (where checkerboard artifacts put their energy) is marked with circles.
    """
    spec_p = mean_log_power_spectrum(pred_logits)
    spec_t = mean_log_power_spectrum(2.0 * _maps(masks) - 1.0)
    vmin = min(np.percentile(spec_p, 1), np.percentile(spec_t, 1))
    vmax = max(spec_p.max(), spec_t.max())
    fig, axes = plt.subplots(1, 2, figsize=(10, 4.6), constrained_layout=True)
    for ax, spec, name in zip(
        axes, (spec_p, spec_t), ("predicted logits", "truth (2·mask − 1)"), strict=True
    ):
        h, w = spec.shape
        ext = (-w / 2 - 0.5, w / 2 - 0.5, h / 2 - 0.5, -h / 2 - 0.5)
        im = ax.imshow(spec, cmap="magma", vmin=vmin, vmax=vmax, extent=ext)
        # lattice {0, N/4, N/2, 3N/4} in signed (shifted) frequencies: {-N/2, -N/4, 0, N/4}
        lat_u = [-(h // 2), -(h // 4), 0, h // 4]
        lat_v = [-(w // 2), -(w // 4), 0, w // 4]
        pts = [(u, v) for u in lat_u for v in lat_v if (u, v) != (0, 0)]
        ax.scatter(
            [v for _, v in pts],
            [u for u, _ in pts],
            s=80,
            facecolors="none",
            edgecolors="cyan",
            linewidths=1.2,
            label="N/4 lattice",
        )
        ax.set_title(name)
        ax.set_xlabel("horizontal frequency (cycles / N)")
        ax.set_ylabel("vertical frequency (cycles / N)")
        ax.legend(loc="upper right", fontsize=8, framealpha=0.6)
    fig.colorbar(im, ax=axes, shrink=0.85, label="log10 mean power")
    fig.suptitle(title or "Mean log-power spectrum (DC at centre)")
    return _finish(fig, path)


# ------------------------------------------------------------------------------ constant response


def plot_const_response(
    per_stage_maps: Sequence,
    scores: Sequence[float] | None = None,
    path: str | Path | None = None,
    title: str | None = None,
    channels: int = 1,
) -> Figure:
    """Constant-input responses of each decoder stage as images.

    ``per_stage_maps``: list of (H, W, C) or (H, W) arrays (``artifact_const_response(...,
    return_maps=True)["maps"]``); the first ``channels`` channels of each stage are shown, each
    normalised by its mean |·| so flat = uniform colour. ``scores``: optional per-stage values for the
    titles.
    """
    maps = [np.asarray(m, dtype=np.float64) for m in per_stage_maps]
    maps = [m[..., None] if m.ndim == 2 else m for m in maps]
    n = max(len(maps), 1)
    rows = max(1, min(channels, min((m.shape[-1] for m in maps), default=1)))
    fig, axes = plt.subplots(
        rows, n, figsize=(3.2 * n, 3.0 * rows + 0.4), squeeze=False, constrained_layout=True
    )
    if not maps:
        axes[0, 0].text(0.5, 0.5, "no decoder stages", ha="center", va="center")
        axes[0, 0].axis("off")
    for j, m in enumerate(maps):
        for i in range(rows):
            ax = axes[i, j]
            ch = m[..., i]
            scale = np.abs(ch).mean() or 1.0
            im = ax.imshow(ch / scale, cmap="coolwarm", interpolation="nearest")
            head = f"stage {j + 1}"
            if scores is not None and j < len(scores):
                head += f"  (score {scores[j]:.3g})"
            ax.set_title(head if rows == 1 else f"{head}, ch {i}", fontsize=9)
            ax.set_xticks([])
            ax.set_yticks([])
            fig.colorbar(im, ax=ax, shrink=0.8, label="response / mean|·|")
    fig.suptitle(title or "Response of each upsampling operator to a constant input")
    return _finish(fig, path)


# -------------------------------------------------------------------------------------- overlays


def plot_overlays(
    images,
    truth,
    pred,
    ids: Sequence[str],
    scores: Sequence[float] | None = None,
    title: str = "",
    path: str | Path | None = None,
) -> Figure:
    """One row per image: image, truth contour over the image, prediction, error map.

    Error map: true positive white, false positive red, false negative blue. ``pred`` is a binary
    mask (or probabilities, binarised at 0.5). ``scores`` (e.g. per-image TGS) go in the row labels.
    """
    img = _maps(images)
    t = _maps(truth) > 0.5
    p = _maps(pred) > 0.5
    n = img.shape[0]
    fig, axes = plt.subplots(
        max(n, 1), 4, figsize=(10, 2.6 * max(n, 1) + 0.5), squeeze=False, constrained_layout=True
    )
    heads = ["image", "truth", "prediction", "errors (FP red, FN blue)"]
    for j, h in enumerate(heads):
        axes[0, j].set_title(h, fontsize=10)
    for i in range(n):
        a = axes[i]
        a[0].imshow(img[i], cmap="gray", vmin=0, vmax=max(1.0, float(img[i].max())))
        a[1].imshow(img[i], cmap="gray", vmin=0, vmax=max(1.0, float(img[i].max())))
        if t[i].any() and not t[i].all():
            a[1].contour(t[i].astype(float), levels=[0.5], colors="lime", linewidths=1.2)
        a[1].imshow(np.ma.masked_where(~t[i], t[i]), cmap="summer", alpha=0.3, vmin=0, vmax=1)
        a[2].imshow(p[i], cmap="gray", vmin=0, vmax=1)
        err = np.zeros(t[i].shape + (3,))
        err[t[i] & p[i]] = (1, 1, 1)
        err[~t[i] & p[i]] = (0.9, 0.1, 0.1)
        err[t[i] & ~p[i]] = (0.1, 0.3, 0.95)
        a[3].imshow(err)
        label = str(ids[i]) if i < len(ids) else f"#{i}"
        if scores is not None and i < len(scores):
            label += f"\nscore {float(scores[i]):.3f}"
        a[0].set_ylabel(label, fontsize=9)
        for ax in a:
            ax.set_xticks([])
            ax.set_yticks([])
    if n == 0:
        for ax in axes[0]:
            ax.axis("off")
    fig.suptitle(title or "Predictions")
    return _finish(fig, path)


# ------------------------------------------------------------------------------- learning curves


def plot_learning_curves(
    history: Mapping[str, Sequence[float]], path: str | Path | None = None, title: str | None = None
) -> Figure:
    """Three panels: loss/val_loss; val_iou/val_tgs_map (and any other iou/map keys); lr (log).

    Missing keys are skipped; ``history`` is a Keras-style dict of per-epoch lists.
    """
    groups = [
        ("loss", [k for k in ("loss", "val_loss") if k in history]),
        (
            "score",
            [k for k in history if any(s in k for s in ("iou", "tgs_map", "dice")) and "loss" not in k],
        ),
        ("learning rate", [k for k in ("lr", "learning_rate") if k in history]),
    ]
    fig, axes = plt.subplots(1, 3, figsize=(14, 3.8), constrained_layout=True)
    for ax, (name, keys) in zip(axes, groups, strict=True):
        for k in keys:
            v = np.asarray(history[k], dtype=float)
            ax.plot(np.arange(1, len(v) + 1), v, marker="o" if len(v) < 30 else None, ms=3, label=k)
        ax.set_title(name)
        ax.set_xlabel("epoch")
        ax.set_ylabel(name)
        ax.grid(alpha=0.3)
        if keys:
            ax.legend(fontsize=8)
            if name == "learning rate":
                vals = np.concatenate([np.asarray(history[k], float) for k in keys])
                if np.all(vals > 0):
                    ax.set_yscale("log")
        else:
            ax.text(0.5, 0.5, "not recorded", ha="center", va="center", transform=ax.transAxes)
    fig.suptitle(title or "Learning curves")
    return _finish(fig, path)


# ------------------------------------------------------------------------------ where score is lost

_GAP_COLORS = ("tab:red", "tab:purple", "tab:orange", "tab:olive", "tab:cyan")  # segmentation.GAP_PARTS's


def _gap_bars(ax, y, score: np.ndarray, parts: dict[str, np.ndarray], labels: Sequence[str]) -> None:
    """Horizontal bars from 0 to 1: the score, then each lost part stacked after it."""
    from segnet.metrics.segmentation import GAP_PARTS

    left = np.nan_to_num(score)
    ax.barh(y, left, color="tab:green", label="tgs_map (scored)")
    for (key, label), color in zip(GAP_PARTS.items(), _GAP_COLORS, strict=True):
        w = np.nan_to_num(parts[key])
        ax.barh(y, w, left=left, color=color, label=f"lost: {label}")
        for yi, li, wi in zip(y, left, w, strict=True):
            if wi >= 0.02:
                ax.text(li + wi / 2, yi, f"{wi:.3f}", ha="center", va="center", fontsize=7)
        left = left + w
    for yi, si in zip(y, score, strict=True):
        ax.text(0.01, yi, f"{si:.4f}", ha="left", va="center", fontsize=8, color="white", weight="bold")
    ax.set_yticks(y, labels)
    ax.set_xlim(0, 1)
    ax.set_xlabel("share of all images' score (tgs_map + the lost parts = 1)")
    ax.legend(fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.22), ncol=2)


def plot_score_gaps(scores, path: str | Path | None = None, title: str | None = None) -> Figure:
    """Where the score is lost (``segmentation.score_gaps``) and the mean score by salt-coverage class
    (empty, then ceil(coverage*10): the classes the folds are stratified by), with the image counts."""
    from segnet.data.folds import coverage_class
    from segnet.metrics.segmentation import GAP_PARTS, score_gaps

    gaps = score_gaps(scores)
    tgs = scores["tgs"].to_numpy(float)
    fig, axes = plt.subplots(1, 2, figsize=(13, 4.2), constrained_layout=True,
                             gridspec_kw={"width_ratios": [1.3, 1]})
    _gap_bars(axes[0], np.array([0.0]), np.array([tgs.mean() if len(tgs) else np.nan]),
              {k: np.array([gaps[k]]) for k in GAP_PARTS}, ["this model"])
    axes[0].set_title(f"where the score is lost ({len(tgs)} images)")
    cls = coverage_class(scores["coverage"])
    names = ["empty"] + [f"{10 * (k - 1)}-{10 * k}%" for k in range(1, 11)]
    count = np.array([(cls == k).sum() for k in range(11)])
    mean = np.array([tgs[cls == k].mean() if count[k] else np.nan for k in range(11)])
    ax = axes[1]
    ax.bar(np.arange(11), np.nan_to_num(mean), color=["tab:gray"] + ["tab:blue"] * 10)
    for k in range(11):
        ax.text(k, np.nan_to_num(mean[k]) + 0.01, f"n={count[k]}", ha="center", va="bottom", fontsize=7)
    ax.set_xticks(np.arange(11), names, rotation=45, ha="right")
    ax.set_ylim(0, 1.1)
    ax.set_ylabel("mean tgs score")
    ax.set_xlabel("salt coverage of the truth")
    ax.set_title("score by coverage class")
    ax.grid(axis="y", alpha=0.3)
    fig.suptitle(title or "Where the score is lost")
    return _finish(fig, path)


def plot_ablation_gaps(summary_df, path: str | Path | None = None, title: str | None = None) -> Figure:
    """Per variant, its mean final score and the mean lost parts (``segmentation.score_gaps``) over its
    replicates, as stacked bars: which kind of error each decoder or component trades."""
    from segnet.metrics.segmentation import GAP_PARTS

    df = summary_df.reset_index(drop=True)
    fcol = "final_mean" if "final_mean" in df.columns else "tgs_map_tuned_mean"
    names = df["variant"].astype(str).tolist()
    fig, ax = plt.subplots(figsize=(11, 1.6 + 0.5 * len(names)), constrained_layout=True)
    y = np.arange(len(names))[::-1].astype(float)
    _gap_bars(ax, y, _col(df, fcol), {k: _col(df, f"{k}_mean") for k in GAP_PARTS}, names)
    ax.set_title(title or "Where each variant loses its final score (mean over replicates)")
    return _finish(fig, path)


# -------------------------------------------------------------------------------------- ablation


def _col(df, name, default=np.nan) -> np.ndarray:
    return df[name].to_numpy(dtype=float) if name in df.columns else np.full(len(df), default)


def plot_ablation(
    summary_df, path: str | Path | None = None, title: str | None = None, reference: str | None = None
) -> Figure:
    """Bars of mean ± std best_val_tgs_map per variant, plus artifact-metric panels when present."""
    df = summary_df.reset_index(drop=True)
    names = df["variant"].astype(str).tolist()
    x = np.arange(len(names))
    art = [c for c in ("artifact_periodic_energy_mean", "artifact_const_response_mean") if c in df.columns]
    fig, axes = plt.subplots(
        1, 1 + len(art), figsize=(5 + 4.5 * len(art), 4.5), squeeze=False, constrained_layout=True
    )
    axes = axes[0]
    colors = ["tab:orange" if n == reference else "tab:blue" for n in names]
    mean, std = _col(df, "tgs_map_mean"), np.nan_to_num(_col(df, "tgs_map_std", 0.0))
    fcol = "final" if "final_mean" in df.columns else "tgs_map_tuned"
    note = ""
    if f"{fcol}_mean" in df.columns:  # best epoch (threshold 0.5) beside the final evaluation
        final, fstd = _col(df, f"{fcol}_mean"), np.nan_to_num(_col(df, f"{fcol}_std", 0.0))
        axes[0].bar(x - 0.2, mean, 0.4, yerr=std, capsize=3, color=colors, label="best epoch (t=0.5)")
        axes[0].bar(x + 0.2, final, 0.4, yerr=fstd, capsize=3, color=colors, alpha=0.55, hatch="//",
                    label="final (flip TTA, tuned t)")
        axes[0].legend(loc="lower right", fontsize=8)
        both, both_std = np.concatenate([mean, final]), np.concatenate([std, fstd])
        if {"significant", "interval"} <= set(df.columns):  # the final-score difference to the reference
            for xi, f, e, sig, kind in zip(x, final, fstd, df["significant"], df["interval"], strict=True):
                if bool(sig) and np.isfinite(f):
                    axes[0].text(xi + 0.2, f + e, "**" if kind == "images+training" else "*", ha="center",
                                 va="bottom", fontsize=9)
            note = ("\n* final differs from the reference beyond image sampling noise (one replicate); "
                    "** beyond image and training noise (hierarchical bootstrap 95%)")
    else:
        axes[0].bar(x, mean, yerr=std, capsize=4, color=colors)
        both, both_std = mean, std
    ok = np.isfinite(both)
    if ok.any():
        lo = max(0.0, float(np.min(both[ok] - both_std[ok])) - 0.05)
        axes[0].set_ylim(lo, min(1.0, float(np.max(both[ok] + both_std[ok])) + 0.03))
    axes[0].set_title("val TGS mAP (mean ± std over " + ("replicates)" if "replicates" in df.columns else "seeds)"))
    axes[0].set_ylabel("tgs_map")
    for ax, c in zip(axes[1:], art, strict=True):
        std_c = c[: -len("_mean")] + "_std"
        err = np.nan_to_num(_col(df, std_c, 0.0)) if std_c in df.columns else None
        ax.bar(x, _col(df, c), yerr=err, capsize=4, color="tab:red")
        ax.set_title(c.removesuffix("_mean").replace("_", " "))
        ax.set_ylabel("lower = fewer checkerboard artifacts")
    for ax in axes:
        ax.set_xticks(x, names, rotation=30, ha="right")
        ax.grid(axis="y", alpha=0.3)
    fig.suptitle((title or "Decoder ablation") + note, fontsize=10 if note else None)
    return _finish(fig, path)


def plot_bootstrap_ci(
    df, path: str | Path | None = None, title: str | None = None, reference: str | None = None
) -> Figure:
    """Forest plot: paired-bootstrap CI of each variant's final-score difference vs the reference; a
    dotted segment is an interval of image sampling only (one replicate), a solid one includes training noise."""
    from matplotlib.lines import Line2D

    d = df.reset_index(drop=True)
    names = d["variant"].astype(str).tolist()
    mean, lo, hi = _col(d, "diff_mean"), _col(d, "diff_lo"), _col(d, "diff_hi")
    kinds = d["interval"].astype(str).tolist() if "interval" in d.columns else [""] * len(d)
    y = np.arange(len(names))[::-1]
    fig, ax = plt.subplots(figsize=(7, 1.0 + 0.45 * max(len(names), 1)), constrained_layout=True)
    ax.axvline(0.0, color="gray", ls="--", lw=1)
    for yi, m, a, b, kind in zip(y, mean, lo, hi, kinds, strict=True):
        if not np.isfinite(m):
            continue
        sig = np.isfinite(a) and np.isfinite(b) and (a > 0 or b < 0)
        color = "tab:green" if sig and m > 0 else "tab:red" if sig else "tab:blue"
        if np.isfinite(a) and np.isfinite(b):
            ax.plot([a, b], [yi, yi], color=color, lw=2, ls=":" if kind == "images" else "-")
        ax.plot([m], [yi], "o", color=color)
    labels = [f"{n} (reference)" if n == reference else n for n in names]
    if "p_best" in d.columns:
        labels = [f"{lab}  p_best {p:.2f}" if np.isfinite(p) else lab
                  for lab, p in zip(labels, _col(d, "p_best"), strict=True)]
    ax.set_yticks(y, labels)
    present = {k for k, n in zip(kinds, names, strict=True) if n != reference and k}
    if present:
        ax.legend(handles=[Line2D([], [], color="gray", lw=2, ls=":" if k == "images" else "-",
                                  label="images only (1 replicate)" if k == "images" else "images + training")
                           for k in sorted(present)], loc="best", fontsize=8, title="interval covers",
                  title_fontsize=8)
    ax.set_xlabel("Δ final tgs score vs reference (flip TTA, tuned threshold; hierarchical paired "
                  "bootstrap 95% CI)")
    ax.grid(axis="x", alpha=0.3)
    ax.set_title(title or "Difference to the reference decoder")
    return _finish(fig, path)


# ----------------------------------------------------------------------------------------- bench


def plot_bench(df, path: str | Path | None = None, title: str | None = None) -> Figure:
    """Grouped bars of images/s per model: training and inference."""
    d = df.reset_index(drop=True)
    names = d["model"].astype(str).tolist()
    x = np.arange(len(names))
    width = 0.38
    fig, ax = plt.subplots(figsize=(max(6.0, 0.9 * len(names) + 2), 4.3), constrained_layout=True)
    for off, col, lab in (
        (-width / 2, "train_images_per_s", "train"),
        (width / 2, "infer_images_per_s", "inference"),
    ):
        v = _col(d, col)
        bars = ax.bar(x + off, v, width, label=lab)
        for b, val in zip(bars, v, strict=True):
            if math.isfinite(val):
                ax.annotate(
                    f"{val:.0f}",
                    (b.get_x() + b.get_width() / 2, b.get_height()),
                    ha="center",
                    va="bottom",
                    fontsize=7,
                )
    ax.set_xticks(x, names, rotation=30, ha="right")
    ax.set_ylabel("images / s")
    ax.legend()
    ax.grid(axis="y", alpha=0.3)
    ax.set_title(title or "Throughput per model")
    return _finish(fig, path)
