"""Evaluation of a trained model: quality, threshold, artifact metrics and pictures, logged to MLflow.

The same function serves the end of every training run (prefix "") and ``segnet evaluate --run-id``
(prefix ``eval_``, on any dataset, the real TGS folder included).
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np

from segnet.config import Config
from segnet.data import load_dataset
from segnet.data.folds import split
from segnet.data.pipeline import from_network, to_network
from segnet.errors import SegnetError
from segnet.inference import predict_logits, probabilities_from_logits
from segnet.metrics import artifacts, segmentation
from segnet.models.decoders import resolve_decoder

# segnet.plots (matplotlib), segnet.tracking and segnet.runs (MLflow) are imported where they are used:
# docs/architecture.md, "Why TensorFlow is imported late".


def overlap_unevenness(spec, options: dict) -> float:
    """The logged ``artifact_overlap_unevenness``: the decoder's own analytic value (``spec.unevenness``,
    from its tap grid; defined in :func:`segnet.metrics.artifacts.overlap_unevenness`)."""
    return spec.unevenness(options)


def const_response(model, spec, return_maps: bool = False):
    res = artifacts.artifact_const_response(model, needs_indices=spec.needs_indices, return_maps=return_maps)
    return res if return_maps else float(res["max"])


def evaluate_model(model, cfg: Config, spec, images: np.ndarray, masks: np.ndarray, ids: list[str],
                   threshold: float | None = None) -> dict:
    """Every number and picture of one model on one set of images (101x101 in, truth at 101x101).

    ``model``: a Keras model, or a list of them (a snapshot ensemble of one run) evaluated as the mean of
    their logits; its ``artifact_const_response`` (a property of one network) is its worst member's.
    ``threshold`` None: searched on these images (when eval.threshold_search), else the given one.
    Returns {"metrics": {...}, "scores": DataFrame, "figures": {artifact_file: Figure},
    "probabilities": (N,101,101) float32 salt probabilities (flip TTA when eval.tta)}.
    """
    _, options = resolve_decoder(cfg.model.decoder, cfg.decoder)
    models = model if isinstance(model, list) else [model]
    x = to_network(images, cfg.data.size, cfg.data.resize_mode)
    logits_plain = _mean_logits(models, x, cfg.train.batch_size, tta=False)
    logits = _mean_logits(models, x, cfg.train.batch_size, tta=True) if cfg.eval.tta else logits_plain
    truth = masks[..., 0] > 0.5
    probs = probabilities_from_logits(logits, cfg.data.resize_mode)
    plain = from_network(logits_plain, cfg.data.resize_mode)[..., 0] > 0.0

    if threshold is None:
        if cfg.eval.threshold_search:
            threshold, _, _ = segmentation.search_threshold(truth, probs)
        else:
            threshold = 0.5
    pred = probs > threshold
    scores = segmentation.score_table(ids, truth, pred)

    # Artifact metrics are measured at network resolution, where the decoder left its fingerprint.
    masks_net = to_network(masks, cfg.data.size, cfg.data.resize_mode, is_mask=True)
    pe = artifacts.artifact_periodic_energy(logits_plain)
    pe_gt = artifacts.artifact_periodic_energy_gt(masks_net)
    const = max((const_response(m, spec, return_maps=True) for m in models), key=lambda c: c["max"])
    metrics = {
        "val_tgs_map_plain": segmentation.tgs_map(truth, plain),
        "val_tgs_map_tta": segmentation.tgs_map(truth, probs > 0.5),
        "val_tgs_map_tuned": float(scores["tgs"].mean()),
        "val_iou_tuned": float(scores["iou"].mean()),
        "val_dice_tuned": segmentation.dice(truth, pred),
        "val_pixel_iou_tuned": segmentation.pixel_iou(truth, pred),
        "best_threshold": float(threshold),
        **{f"val_{k}": v for k, v in segmentation.score_gaps(scores).items()},
        "artifact_periodic_energy": pe,
        "artifact_periodic_energy_gt": pe_gt,
        "artifact_excess": artifacts.artifact_excess(pe, pe_gt),
        "artifact_const_response": float(const["max"]),
        "artifact_overlap_unevenness": overlap_unevenness(spec, options),
    }

    figures = _figures(images, truth, pred, ids, scores, logits_plain, masks_net, const["maps"], threshold,
                       cfg.eval.overlays)
    return {"metrics": metrics, "scores": scores, "figures": figures, "probabilities": probs}


def _mean_logits(models: list, images_net: np.ndarray, batch_size: int, tta: bool) -> np.ndarray:
    """The members' mean logits at network resolution (where the artifact metrics look). Mapping back to
    101x101 is linear (a crop or a bilinear resize), so this is the mean of their 101x101 logits, what
    ``inference.EnsemblePredictor`` (prediction, the logged model) computes."""
    return np.mean([predict_logits(m, images_net, batch_size, tta=tta) for m in models], axis=0)


def _figures(images, truth, pred, ids, scores, logits_plain, masks_net, const_maps, threshold: float,
             overlays: int) -> dict:
    """The pictures of one evaluation: spectra, constant responses, worst and best overlays."""
    from segnet import plots

    return {
        "plots/spectra.png": plots.plot_spectra(logits_plain, masks_net),
        "plots/const_response.png": plots.plot_const_response(const_maps),
        **_gap_figure(scores),
        **_overlays(images, truth, pred, ids, scores, threshold, overlays),
    }


def _gap_figure(scores) -> dict:
    """Where the score is lost (``segmentation.score_gaps``) and the score by salt-coverage class."""
    from segnet import plots

    return {"plots/score_gaps.png": plots.plot_score_gaps(scores)}


def _overlays(images, truth, pred, ids, scores, threshold: float, overlays: int) -> dict:
    """Overlays of the worst and best images by tgs score (then iou)."""
    from segnet import plots

    order = np.argsort(scores["tgs"].to_numpy() + 1e-3 * scores["iou"].to_numpy(), kind="stable")
    k = max(1, overlays // 2)
    figures = {}
    for name, sel in (("worst", order[:k]), ("best", order[::-1][:k])):
        figures[f"plots/overlays_{name}.png"] = plots.plot_overlays(
            images[sel, ..., 0], truth[sel], pred[sel], [ids[i] for i in sel],
            scores["tgs"].to_numpy()[sel], title=f"{name} validation images (threshold {threshold:.2f})",
        )
    return figures


def evaluate_and_log(run, model, cfg: Config, spec, images, masks, ids, prefix: str = "",
                     threshold: float | None = None) -> dict:
    """evaluate_model, then log its metrics (with ``prefix``), per-image scores and figures to ``run``."""
    out = evaluate_model(model, cfg, spec, images, masks, ids, threshold=threshold)
    _log_evaluation(run, out, prefix)
    if not prefix:  # a training run's validation fold: what `segnet cv` tunes its out-of-fold threshold on
        log_probabilities(run, ids, out["probabilities"], "predictions/val_probs.npz")
    return out["metrics"]


def _log_evaluation(run, out: dict, prefix: str) -> None:
    run.log_metrics({f"{prefix}{k}": v for k, v in out["metrics"].items()})
    folder = "eval/" if prefix else ""
    run.log_dataframe(out["scores"], "eval/predictions/scores.csv" if prefix else "predictions/val_scores.csv")
    for path, fig in out["figures"].items():
        run.log_figure(fig, f"{folder}{path}")


def log_probabilities(run, ids, probs: np.ndarray, artifact_file: str) -> None:
    """``ids`` and their (N,101,101) salt probabilities as float16 in a compressed .npz artifact."""
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / Path(artifact_file).name
        np.savez_compressed(path, ids=np.asarray([str(i) for i in ids]), probs=np.asarray(probs, np.float16))
        parent = str(Path(artifact_file).parent)
        run.log_artifact(path, None if parent == "." else parent)


def read_probabilities(path) -> tuple[list[str], np.ndarray]:
    """What ``log_probabilities`` wrote: the ids and (N,101,101) float32 probabilities."""
    with np.load(path) as z:
        return [str(i) for i in z["ids"]], z["probs"].astype(np.float32)


def evaluate_ensemble(predictor, images: np.ndarray, masks: np.ndarray, ids: list[str], overlays: int) -> dict:
    """A fold ensemble (``inference.EnsemblePredictor``) on labelled images, at its threshold (the
    out-of-fold one): the quality metrics of ``evaluate_model`` from the mean logits at 101x101, the
    per-image scores and the overlays. The artifact metrics belong to one network: see each fold's run."""
    probs = predictor.probabilities(images, progress=True)
    truth = masks[..., 0] > 0.5
    pred = probs > predictor.threshold
    scores = segmentation.score_table(ids, truth, pred)
    metrics = {
        "val_tgs_map_tta" if predictor.tta else "val_tgs_map_plain": segmentation.tgs_map(truth, probs > 0.5),
        "val_tgs_map_tuned": float(scores["tgs"].mean()),
        "val_iou_tuned": float(scores["iou"].mean()),
        "val_dice_tuned": segmentation.dice(truth, pred),
        "val_pixel_iou_tuned": segmentation.pixel_iou(truth, pred),
        "best_threshold": float(predictor.threshold),
        **{f"val_{k}": v for k, v in segmentation.score_gaps(scores).items()},
        "ensemble_models": float(len(predictor.members)),
    }
    figures = {**_gap_figure(scores), **_overlays(images, truth, pred, ids, scores, predictor.threshold, overlays)}
    return {"metrics": metrics, "scores": scores, "figures": figures}


def evaluate_run(run_id: str, overrides: list[str] | tuple[str, ...] = ()) -> dict:
    """Recompute every metric of a run's best model on a dataset and log it to the run as ``eval_*``.

    On the dataset the run was trained on, the run's validation fold is used; on any other dataset
    (the real TGS folder, say) every image is. The run's tuned threshold is kept, never re-tuned on
    the data being evaluated. A `segnet cv` run is evaluated as its fold ensemble (the mean of the fold
    models' logits, the out-of-fold threshold), on another labelled folder only: every image of its own
    data trained some fold model (its out-of-fold score is the run's ``oof_tgs_map``). A snapshot
    ensemble (sgdr, ``train.cycles`` > 1) is evaluated as it was at the end of its training: every metric,
    on the mean of its snapshots' logits.
    """
    from segnet import tracking
    from segnet.runs import load_run, run_config

    uri, info, cfg = run_config(run_id, overrides)
    data = load_dataset(cfg)  # before the models load: a wrong folder fails in a second
    trained_on = info.data.tags.get("segnet.data_fingerprint")
    is_cv = info.data.tags.get("segnet.role") == "cv"
    if is_cv and data.fingerprint == trained_on:
        raise SegnetError(f"cv run '{run_id}' trained its fold models on every image of {data.dir}, so its "
                          "fold ensemble cannot be scored there (its out-of-fold score is the run's "
                          "oof_tgs_map); give another labelled folder: data.dir=<folder>")
    tr = load_run(run_id, overrides)
    if data.fingerprint == trained_on:
        d = tr.cfg.data
        _, idx = split(data.ids, data.masks, n_folds=d.n_folds, fold=d.fold, seed=d.fold_seed)
        subset = f"validation fold {tr.cfg.data.fold}"
    else:
        idx = np.arange(len(data.ids))
        subset = "all images"
    what = f"run {run_id}"
    if is_cv:
        what = (f"the fold ensemble of cv run {run_id} ({len(tr.members)} fold models, out-of-fold threshold "
                f"{tr.threshold:.2f})")
    elif tr.members:
        what = f"the snapshot ensemble of run {run_id} ({len(tr.members)} snapshots)"
    print(f"evaluate: {what} on {data.dir} ({data.kind}, {subset}: {len(idx)} images)", flush=True)
    run = tracking.Run(tr.uri, run_id)
    run.set_tags({"segnet.eval_dataset": data.kind, "segnet.eval_data_fingerprint": data.fingerprint,
                  "segnet.eval_data_dir": str(data.dir), "segnet.eval_subset": subset})
    tracking.log_evaluation_input(run, data, tr.cfg, idx, same_data=data.fingerprint == trained_on)
    images, masks, ids = data.images[idx], data.masks[idx], [data.ids[i] for i in idx]
    if is_cv:
        out = evaluate_ensemble(tr.predictor(), images, masks, ids, tr.cfg.eval.overlays)
        _log_evaluation(run, out, "eval_")
        metrics = out["metrics"]
    else:
        model = [m.model for m in tr.members] or tr.model  # a snapshot ensemble, or one model
        metrics = evaluate_and_log(run, model, tr.cfg, tr.spec, images, masks, ids, prefix="eval_",
                                   threshold=tr.threshold)
    width = max(len(k) for k in metrics)
    for k, v in metrics.items():
        print(f"  eval_{k:<{width}} {v:.4f}")
    return metrics
