"""Hierarchical (two-level) paired bootstrap of per-image scores: which variant is better, with evidence.

Pure numpy and pandas (no TensorFlow, no MLflow), so ``segnet ablate`` and ``segnet compare`` share it
and the tests give it known answers.

The input is one long table, one row per (replicate, image): ``variant``, ``replicate`` (a training run:
one seed of one fold), ``image`` (its id), ``score`` (its final per-image score) and optionally ``fold``
(the validation fold the replicate was scored on; default 0). Images are paired across variants by id.

One bootstrap draw:

1. *training level*: each variant's replicates are resampled with replacement, independently per
   variant and within each fold (a fold's replicates are the ones that scored its images);
2. *image level*: the images are resampled with replacement, **one resample shared by every variant**
   (the images stay paired);
3. each variant's mean: over the resampled images of each image's mean over the resampled replicates.

From ``n`` draws: per variant, its difference to the reference (the observed difference and the 2.5 and
97.5 percentiles of the drawn ones), ``significant`` (the interval excludes 0) and ``p_best`` (the
share of draws in which it has the best mean; ties split). With one replicate per fold for a variant
and the reference, step 1 changes nothing and the interval covers image sampling only: ``interval``
is ``images``, else ``images+training``.

Determinism: the image resample comes from ``numpy.random.default_rng(seed)`` drawn as
``integers(0, n_images, (n, n_images))`` over the images in order of first appearance in the table, so
with one replicate everywhere the interval equals the classic paired bootstrap of the per-image
differences in that order; each variant's replicate resample has its own stream (seeded by ``seed`` and
the variant's name), so a variant's numbers do not depend on which other variants are in the table.
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

__all__ = ["Bootstrap", "bootstrap", "scores_table", "verdict_sentence", "IMAGES", "IMAGES_TRAINING"]

IMAGES = "images"
IMAGES_TRAINING = "images+training"


@dataclass
class _Group:
    """One variant's replicates of one fold: scores (replicates x images) and the images' columns."""

    scores: np.ndarray
    cols: np.ndarray


@dataclass
class Bootstrap:
    """The result: ``table`` (one row per variant) and the draws (``n`` x variants) behind it."""

    variants: list[str]
    reference: str
    draws: np.ndarray  # (n, variants): each variant's mean score in each draw
    observed: np.ndarray  # (variants,): each variant's mean on the common images (replicates averaged per image)
    n_images: int
    table: pd.DataFrame = field(repr=False)
    max_replicates: np.ndarray = field(default=None, repr=False)  # (variants,): most replicates of one fold

    def kind(self, a: str, b: str) -> str:
        """What the interval of ``a`` minus ``b`` covers: ``images+training`` when either has two or more
        replicates of a fold (their resampling adds training noise), else ``images``."""
        r = max(self.max_replicates[self.variants.index(a)], self.max_replicates[self.variants.index(b)])
        return IMAGES_TRAINING if r > 1 else IMAGES

    def diff(self, a: str, b: str) -> tuple[float, float, float]:
        """``a`` minus ``b``: the observed difference of means and its 95% percentile interval."""
        i, j = self.variants.index(a), self.variants.index(b)
        d = self.draws[:, i] - self.draws[:, j]
        return (float(self.observed[i] - self.observed[j]), float(np.percentile(d, 2.5)),
                float(np.percentile(d, 97.5)))

    def lead(self) -> dict:
        """The best-mean variant and its lead: ``lead_lo`` is the smallest lower 95% bound of its
        difference against any other variant, ``runner_up`` the second-best mean with that difference.
        ``winner`` is the best variant when its lead survives every interval (``lead_lo > 0``), else None;
        ``interval`` is what the interval against the runner-up covers."""
        order = np.argsort(-self.observed, kind="stable")
        best = self.variants[order[0]]
        if len(self.variants) == 1:
            return {"best": best, "winner": best, "lead_lo": float("inf"), "runner_up": None,
                    "runner_up_diff": (float("nan"),) * 3, "interval": self.kind(best, best)}
        lows = [self.diff(best, v)[1] for v in self.variants if v != best]
        lead_lo = float(min(lows))
        runner = self.variants[order[1]]
        return {"best": best, "winner": best if lead_lo > 0 else None, "lead_lo": lead_lo, "runner_up": runner,
                "runner_up_diff": self.diff(best, runner), "interval": self.kind(best, runner)}


def scores_table(replicates: dict[str, list], folds: dict[str, list] | None = None) -> pd.DataFrame:
    """The long table from ``{variant: [per-image scores of each replicate, ...]}``; each replicate a
    ``pandas.Series`` indexed by image id (or an array: ids 0..n-1); ``folds`` likewise gives each
    replicate's fold (default 0)."""
    parts = []
    for v, reps in replicates.items():
        for k, s in enumerate(reps):
            s = s if isinstance(s, pd.Series) else pd.Series(np.asarray(s, float))
            fold = folds[v][k] if folds else 0
            parts.append(pd.DataFrame({"variant": v, "replicate": f"{v}/{k}", "fold": fold,
                                       "image": s.index.astype(str), "score": s.to_numpy(float)}))
    return pd.concat(parts, ignore_index=True)


def bootstrap(table: pd.DataFrame, reference: str | None = None, n: int = 2000, seed: int = 0,
              training: bool = True) -> Bootstrap:
    """The hierarchical paired bootstrap of ``table`` (see the module doc).

    ``reference``: the variant the differences are taken against (default: the first in the table).
    ``training=False`` averages each variant's replicates per image first and resamples images only
    (the classic paired bootstrap; every ``interval`` is then ``images``).
    """
    if n < 1:
        raise ValueError(f"bootstrap resamples must be >= 1; got {n}")
    t, variants = _ordered(table, reference)
    per_variant, images = _fold_tables(t, variants)
    col = {img: k for k, img in enumerate(images)}
    weights = _image_weights(n, len(images), seed)

    draws = np.empty((n, len(variants)))
    observed = np.empty(len(variants))
    rows = []
    for k, v in enumerate(variants):
        groups = _groups(per_variant[v], col, training)
        draws[:, k], observed[k] = _variant_draws(groups, weights, np.random.default_rng([seed, zlib.crc32(v.encode())]))
        reps = t[t.variant == v].groupby("replicate", sort=False)["score"].mean()
        rows.append({"variant": v, "replicates": int(len(reps)), "final_mean": float(reps.mean()),
                     "final_std": float(reps.std(ddof=1)) if len(reps) > 1 else 0.0,
                     "_max_r": max(g.scores.shape[0] for g in groups)})
    return _result(variants, variants[0], draws, observed, len(images), rows)


def _ordered(table: pd.DataFrame, reference: str | None) -> tuple[pd.DataFrame, list[str]]:
    """The table with a fold column, the reference variant first (its images come first)."""
    t = table if "fold" in table.columns else table.assign(fold=0)
    t = t.assign(image=t["image"].astype(str), variant=t["variant"].astype(str))
    if t[["variant", "replicate", "image"]].duplicated().any():
        raise ValueError("a replicate scores an image twice")
    variants = list(pd.unique(t["variant"]))
    reference = variants[0] if reference is None else reference
    if reference not in variants:
        raise ValueError(f"reference '{reference}' is not in the table (variants: {', '.join(variants)})")
    variants = [reference] + [v for v in variants if v != reference]
    return pd.concat([t[t.variant == v] for v in variants]), variants


def _fold_tables(t: pd.DataFrame, variants: list[str]) -> tuple[dict[str, dict], list[str]]:
    """Per variant and fold: replicates x images; an image counts for a variant when every replicate of
    its fold scored it, and is compared when it counts for every variant (returned, in table order)."""
    per_variant: dict[str, dict] = {}
    covered: set | None = None
    for v in variants:
        folds = {fold: g.pivot(index="replicate", columns="image", values="score").dropna(axis=1)
                 for fold, g in t[t.variant == v].groupby("fold", sort=True)}
        ids = [set(w.columns) for w in folds.values()]
        twice = sorted(set().union(*[a & b for i, a in enumerate(ids) for b in ids[i + 1:]]))
        if twice:
            raise ValueError(f"variant '{v}': image '{twice[0]}' is scored in two folds")
        per_variant[v] = folds
        mine = set().union(*ids)
        covered = mine if covered is None else covered & mine
    images = [i for i in pd.unique(t["image"]) if i in covered]
    if not images:
        raise ValueError("no image is scored by every variant; compare runs of the same data and folds")
    return per_variant, images


def _image_weights(n: int, n_img: int, seed: int) -> np.ndarray:
    """(n, n_img): each draw's image resample as weights (how often each image was drawn / n_img)."""
    idx = np.random.default_rng(seed).integers(0, n_img, size=(n, n_img))
    counts = np.bincount((idx + (np.arange(n) * n_img)[:, None]).ravel(), minlength=n * n_img)
    return counts.reshape(n, n_img).astype(float) / n_img


def _groups(folds: dict, col: dict[str, int], training: bool) -> list[_Group]:
    """A variant's folds as (replicates x compared images) score blocks with their image columns."""
    groups = []
    for wide in folds.values():
        keep = sorted((c for c in wide.columns if c in col), key=col.__getitem__)
        if keep:
            s = wide[keep].to_numpy(float)
            groups.append(_Group(s if training else s.mean(axis=0, keepdims=True), np.array([col[c] for c in keep])))
    return groups


def _variant_draws(groups: list[_Group], weights: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, float]:
    """One variant's mean in every draw (its replicates resampled per fold, the shared image weights),
    and its observed mean."""
    n, n_img = weights.shape
    total, obs = np.zeros(n), 0.0
    for g in groups:
        r = g.scores.shape[0]
        w = rng.multinomial(r, np.full(r, 1.0 / r), size=n) / r if r > 1 else None
        per_image = w @ g.scores if w is not None else g.scores  # (n or 1, images of the fold)
        fold_weights = weights if len(g.cols) == n_img else weights[:, g.cols]  # one fold: every image, in order
        total += np.einsum("ij,ij->i", fold_weights, np.broadcast_to(per_image, fold_weights.shape))
        obs += g.scores.mean(axis=0).sum()
    return total, obs / n_img


def _result(variants, reference, draws, observed, n_img, rows) -> Bootstrap:
    """The Bootstrap with its summary table: differences against the reference, interval kind, p_best."""
    best = draws == draws.max(axis=1, keepdims=True)
    p_best = (best / best.sum(axis=1, keepdims=True)).mean(axis=0)
    out = Bootstrap(variants, reference, draws, observed, n_img, pd.DataFrame(),
                    np.array([row.pop("_max_r") for row in rows]))
    for k, row in enumerate(rows):
        kind = out.kind(row["variant"], reference)
        if k == 0:
            d = {"diff_mean": 0.0, "diff_lo": 0.0, "diff_hi": 0.0, "significant": False}
        else:
            mean, lo, hi = out.diff(row["variant"], reference)
            d = {"diff_mean": mean, "diff_lo": lo, "diff_hi": hi, "significant": bool(lo > 0 or hi < 0)}
        row.update(d, interval=kind, p_best=float(p_best[k]))
    out.table = pd.DataFrame(rows, columns=["variant", "replicates", "final_mean", "final_std", "diff_mean",
                                            "diff_lo", "diff_hi", "interval", "significant", "p_best"])
    return out


def verdict_sentence(verdict: dict) -> str:
    """One sentence from ``Bootstrap.lead()``: the winner whose lead survives the intervals, or that no
    variant is distinguishable."""
    covers = ("image sampling and training noise" if verdict.get("interval") == IMAGES_TRAINING
              else "image sampling only: one replicate per variant")
    if verdict.get("runner_up") is None:
        return f"best variant: {verdict['best']} (the only variant)"
    d, lo, hi = verdict["runner_up_diff"]
    lead = f"{verdict['best']} leads the runner-up {verdict['runner_up']} by {d:+.4f} [{lo:+.4f}, {hi:+.4f}]"
    if verdict.get("winner"):
        return (f"best variant: {verdict['winner']}, its lead over every other variant survives the 95% interval "
                f"({lead}; the interval covers {covers})")
    return ("no variant is distinguishable: the best mean final score does not lead every other variant beyond "
            f"the 95% interval ({lead}; the interval covers {covers})")
