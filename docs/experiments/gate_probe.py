"""Is the empty-mask gate limited by its head or by the features under it? (README, Results, tgs_best.)

Reads a finished deep-supervision run, takes its frozen features (the average and the max of the bottleneck
and of the last decoder stage), fits richer classifiers on the training fold (both flips) and scores them on
the validation fold (flip-averaged features) the way training scores its own gate: the gate threshold that
maximises the validation tgs_map of the flip-TTA mask at the run's binarisation threshold (its final score). Also with
the gate threshold tuned on one half of validation and scored on the other (50 random halvings).

    MLFLOW_TRACKING_URI=sqlite:///mlflow.db .venv/bin/python docs/experiments/gate_probe.py <run id> path/to/tgs-salt

Uses scikit-learn, which MLflow installs; an experiment, not a segnet feature.
"""

from __future__ import annotations

import sys

import keras
import numpy as np
from sklearn.ensemble import HistGradientBoostingClassifier
from sklearn.linear_model import LogisticRegression
from sklearn.neural_network import MLPClassifier
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from segnet.data import load_dataset
from segnet.data.folds import split
from segnet.data.pipeline import from_network, to_network
from segnet.metrics.segmentation import sigmoid, tgs_scores
from segnet.models import heads
from segnet.runs import load_run


def gated_score(p, kept, empty, fit_ix=None, score_ix=None):
    """The mean score of the ``score_ix`` images behind the gate threshold training would pick on ``fit_ix``
    (``heads.best_gate``); both default to every image."""
    fit_ix = np.arange(len(p)) if fit_ix is None else fit_ix
    score_ix = fit_ix if score_ix is None else score_ix
    t, _ = heads.best_gate(p[fit_ix], kept[fit_ix], empty[fit_ix])
    return float(np.where(p[score_ix] >= t, kept[score_ix], empty[score_ix]).mean())


def cross_fitted(p, kept, empty, reps: int = 50) -> float:
    rng, out = np.random.default_rng(0), []
    for _ in range(reps):
        q = rng.permutation(len(p))
        a, b = q[: len(p) // 2], q[len(p) // 2:]
        out += [gated_score(p, kept, empty, a, b), gated_score(p, kept, empty, b, a)]
    return float(np.mean(out))


def main(run_id: str, data_dir: str) -> None:
    run = load_run(run_id, [f"data.dir={data_dir}"])
    model, d = run.model, run.cfg.data
    if not heads.is_supervised(model):
        sys.exit(f"gate_probe: run {run_id} has no empty-mask gate (model.deep_supervision was off)")
    data = load_dataset(run.cfg, progress=False)
    tix, vix = split(data.ids, data.masks, n_folds=d.n_folds, fold=d.fold, seed=d.fold_seed)
    has = data.masks.reshape(len(data.masks), -1).max(1) > 0.5
    features = keras.Model(model.input, [model.get_layer("salt_pool").input, model.get_layer("mask").input])

    def pooled(ix, flip: bool):
        x = to_network(data.images[ix], d.size, d.resize_mode)
        b, c = features.predict(x[:, :, ::-1] if flip else x, batch_size=32, verbose=0)
        return np.concatenate([b.mean((1, 2)), b.max((1, 2)), c.mean((1, 2)), c.max((1, 2))], axis=1)

    xt, yt = np.concatenate([pooled(tix, False), pooled(tix, True)]), np.tile(has[tix], 2)
    xv, yv = 0.5 * (pooled(vix, False) + pooled(vix, True)), has[vix]
    mask, salt = heads.mask_and_salt(model, to_network(data.images[vix], d.size, d.resize_mode), 32, tta=True)
    probs = sigmoid(from_network(mask, d.resize_mode)[..., 0])
    kept = tgs_scores(data.masks[vix][..., 0] > 0.5, probs > run.threshold)  # each image's score if kept
    empty = ~yv
    n_bottleneck = 2 * int(features.outputs[0].shape[-1])
    rows = {"the model's own head": (None, sigmoid(salt))}
    for name, clf, cols in [
        ("logistic regression, all features", make_pipeline(StandardScaler(), LogisticRegression(C=0.1, max_iter=2000)),
         slice(None)),
        ("logistic regression, bottleneck average + max",
         make_pipeline(StandardScaler(), LogisticRegression(C=0.1, max_iter=2000)), slice(0, n_bottleneck)),
        ("MLP (64 hidden)", make_pipeline(StandardScaler(), MLPClassifier((64,), alpha=1e-2, max_iter=500,
                                                                         early_stopping=True, random_state=0)),
         slice(None)),
        ("gradient boosting", HistGradientBoostingClassifier(max_iter=300, learning_rate=0.05, random_state=0),
         slice(None)),
    ]:
        clf.fit(xt[:, cols], yt)
        rows[name] = (heads.salt_auc(clf.predict_proba(xt[:, cols])[:, 1], yt), clf.predict_proba(xv[:, cols])[:, 1])
    print(f"run {run_id}: {xt.shape[1]} features, {len(tix)} training images (x2 flips), {len(vix)} validation")
    print("| classifier | training AUC | validation AUC | final tgs_map, gate tuned on validation | cross-fitted |")
    print("|---|---|---|---|---|")
    for name, (train_auc, p) in rows.items():
        tr = "" if train_auc is None else f"{train_auc:.3f}"
        print(f"| {name} | {tr} | {heads.salt_auc(p, yv):.3f} | {gated_score(p, kept, empty):.4f} | "
              f"{cross_fitted(p, kept, empty):.4f} |")


if __name__ == "__main__":
    if len(sys.argv) != 3:
        sys.exit(__doc__)
    main(sys.argv[1], sys.argv[2])
