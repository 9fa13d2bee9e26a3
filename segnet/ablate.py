"""Ablation: every decoder variant on the same data, split and seeds; one MLflow parent, nested children.

Restartable: the parent is found again by its ablation hash (or ``--resume ID``); finished children are
skipped and an unfinished one resumes from its last epoch. Each child is a `segnet train` process
(``--jobs N`` at once), so a crash of one cannot take the others down, and Ctrl-C or SIGTERM stops
them all (their runs end KILLED). A running ablation holds a lock: a second `ablate` of the same
config is refused instead of training the same children twice. The parent, its lock and the scheduler
of the children are ``segnet.children``, shared with `segnet cv`. With ``folds: all`` in the ablation
file the children are variant x seed x fold (tag ``segnet.fold``). For a scheduler of one's own (Slurm
arrays, Kubernetes Jobs), ``plan_lines`` (`--plan`) prints the children's commands instead of running them,
and ``summarize_run`` (`--summarize ID`) ends the ablation from its parent run's id alone.
"""

from __future__ import annotations

import hashlib
import json
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import yaml

from segnet import paths
from segnet.children import (
    Child,
    ParentSpec,
    find_or_create_parent,
    finished_runs,
    finished_so_far,
    fold_of,
    held_parent,
    parent_run,
    train_children,
    unfinished_commands,
)
from segnet.config import Config, _read_yaml, load_config
from segnet.errors import ConfigError, SegnetError
from segnet.metrics.segmentation import GAP_PARTS

ID_TAG = "segnet.ablation_id"  # the tag that names a child's ablation
ABLATION_KEYS = {"profile", "seeds", "folds", "bootstrap", "overrides", "variants"}


@dataclass
class AblationPlan:
    file: Path
    children: list[Child]  # variant x seed x fold, in that order
    variants: list[str]
    bootstrap: int
    hash: str
    experiment: str
    profile: Path | None = None
    folds: list[int] = field(default_factory=lambda: [0])
    path_hash: str = ""  # the hash from the children's path hashes (``Config.path_hash``): found by it too

    @property
    def n_seeds(self) -> int:
        return len(self.children) // (len(self.variants) * len(self.folds))


def plan(config_file: str | Path | None, overrides=(), seeds: int | None = None) -> AblationPlan:
    """Read the ablation file and resolve (and so validate) every child's config before any work."""
    f = Path(config_file) if config_file else paths.ABLATION_CONFIG
    if not f.exists():
        raise ConfigError(f"ablation file not found: {f}")
    spec = _read_yaml(f)  # a folder, broken YAML, a binary file or a list: one line naming the file
    unknown = set(spec) - ABLATION_KEYS
    if unknown:
        raise ConfigError(f"{f}: unknown key '{sorted(unknown)[0]}' (valid: {', '.join(sorted(ABLATION_KEYS))})")
    variants = spec.get("variants") or {}
    if not isinstance(variants, dict) or not variants:
        raise ConfigError(f"{f}: 'variants' must map variant names to their overrides")
    n_seeds = seeds if seeds is not None else spec.get("seeds", 1)
    if not isinstance(n_seeds, int) or n_seeds < 1:
        raise ConfigError(f"{f}: 'seeds' must be a positive integer; got {n_seeds!r}")
    boot = spec.get("bootstrap", 2000)
    if not isinstance(boot, int) or boot < 100:
        raise ConfigError(f"{f}: 'bootstrap' must be an integer >= 100; got {boot!r}")
    profile = spec.get("profile")
    if profile is not None and not isinstance(profile, str):
        raise ConfigError(f"{f}: 'profile' must be a path to a profile YAML; got {profile!r}")
    profile = (paths.ROOT / profile) if profile and not Path(profile).is_absolute() else profile
    if not isinstance(spec.get("overrides") or [], list):
        raise ConfigError(f"{f}: 'overrides' must be a list of key=value lines; got {spec['overrides']!r}")
    common = [str(o) for o in spec.get("overrides") or []] + list(overrides)

    children = []
    base = load_config(profile, common)
    folds = _folds(f, spec.get("folds"), base)
    explicit = "folds" in spec  # absent: no data.fold override, so older ablations keep their configs
    for name, var in variants.items():
        if not isinstance(var, dict):
            raise ConfigError(f"{f}: variant '{name}' must be a mapping of key: value")
        var_over = [f"{k}={_yaml_scalar(v)}" for k, v in var.items()]
        for i in range(n_seeds):
            seed = base.train.seed + i
            for k in folds:
                over = var_over + common + [f"train.seed={seed}", f"tracking.variant={name}",
                                            *([f"data.fold={k}"] if explicit else [])]
                try:
                    cfg = load_config(profile, over)
                except ConfigError as e:
                    raise ConfigError(f"{f}: variant '{name}': {e}") from None
                label = _label(name, seed, cfg.data.fold, len(folds))
                children.append(Child(name, seed, cfg, over, label=label))
    h, by_path = (_plan_hash(children, len(folds), by_path) for by_path in (False, True))
    return AblationPlan(f, children, list(variants), boot, h, base.tracking.experiment,
                        Path(profile) if profile else None, folds, path_hash=by_path)


def _plan_hash(children: list[Child], n_folds: int, by_path: bool) -> str:
    """The ablation's hash, from its children's config hashes (``Config.hash``; ``by_path``: their path
    hashes). One fold: the hash of the ablations made before `folds` existed (the fold is in each
    config's hash)."""
    key = [[c.variant, c.seed, c.cfg.hash(by_path=by_path)] if n_folds == 1
           else [c.variant, c.seed, c.fold, c.cfg.hash(by_path=by_path)] for c in children]
    return hashlib.sha256(json.dumps(key).encode()).hexdigest()[:12]


def _label(variant: str, seed: int, fold: int, n_folds: int) -> str:
    """How a child's output and progress lines name it: ``variant sSEED``, ``fFOLD`` added over several folds."""
    return f"{variant} s{seed}" + (f" f{fold}" if n_folds > 1 else "")


def _folds(f: Path, value, base: Config) -> list[int]:
    """The ablation file's ``folds``: absent (the config's data.fold, 0 by default), ``all`` (every fold
    of data.n_folds) or a list of distinct fold numbers."""
    n = base.data.n_folds
    if value is None:
        return [base.data.fold]
    if value == "all":
        return list(range(n))
    if not isinstance(value, list) or not value or not all(isinstance(k, int) and not isinstance(k, bool)
                                                           for k in value):
        raise ConfigError(f"{f}: 'folds' must be 'all' or a list of fold numbers; got {value!r}")
    bad = [k for k in value if not 0 <= k < n]
    if bad or len(set(value)) != len(value):
        raise ConfigError(f"{f}: 'folds' must be distinct folds in 0..{n - 1} (data.n_folds={n}); got {value!r}")
    return list(value)


def _yaml_scalar(v) -> str:
    return yaml.safe_dump(v, default_flow_style=True).strip().removesuffix("...").strip()


def ablate(config_file=None, overrides=(), seeds: int | None = None, jobs: int = 1, resume: str | None = None,
           backend: str = "local", address: str | None = None):
    """`segnet ablate`: train the children not finished yet (``backend``: processes of this machine, ``jobs``
    at once, or tasks of the Ray cluster at ``address``; ``segnet.cluster``), then summarize them."""
    from segnet import cluster, tracking

    p = plan(config_file, overrides, seeds)
    register = _register_name(p)
    if jobs < 1:
        raise ConfigError(f"--jobs must be >= 1; got {jobs}")
    uri = tracking.tracking_uri(p.children[0].cfg)
    runner = cluster.open_runner(backend, address, uri, jobs, p.children, "ablate")  # Ray joined, store checked
    try:
        parent, lock = _find_or_create_parent(uri, p, resume)
        _announce(p, parent.run_id)

        # A restarted ablation adds its time to the time the earlier invocations spent.
        t0 = time.perf_counter() - parent.info().data.metrics.get("wall_time_s", 0.0)
        try:
            with tracking.run_guard(parent):
                train_children(uri, p.experiment, parent.run_id, p.children, p.profile, jobs, id_tag=ID_TAG,
                               who="ablate", runner=runner)
                summary, wall = _conclude(uri, p, parent, t0, register)
        finally:
            lock.release()
    finally:
        runner.close()
    print(summary_markdown(summary), flush=True)
    print(f"ablation_run_id: {parent.run_id}  (wall time {wall / 60:.1f} min)")
    exp_id = parent.info().info.experiment_id
    print(f"review it: make ui  (then {tracking.runs_url(uri, exp_id)})", flush=True)
    return parent.run_id, summary


def _register_name(p: AblationPlan) -> str | None:
    """``tracking.register``: the registered model the best variant goes to, checked before any work."""
    register = p.children[0].cfg.tracking.register
    if register and not p.children[0].cfg.tracking.log_model:
        raise ConfigError(f"tracking.register={register} needs tracking.log_model=true (nothing to register)")
    return register


def _announce(p: AblationPlan, run_id: str) -> None:
    folds = f" x {len(p.folds)} folds" if len(p.folds) > 1 else ""
    print(f"ablation_run_id: {run_id}  ({len(p.variants)} variants x {p.n_seeds} seeds{folds}, hash {p.hash})",
          flush=True)


def _conclude(uri: str, p: AblationPlan | Recorded, parent, t0: float,
              register: str | None) -> tuple[pd.DataFrame, float]:
    """The end of an ablation, `ablate`'s and `--summarize`'s: the summary of the children finished so far
    (``summarize``), logged to the parent (``_log_summary``) with the wall time since ``t0`` (a
    ``time.perf_counter()`` value). Returns the summary and that wall time."""
    from segnet import tracking

    summary, per_image = summarize(uri, p, parent.run_id)
    wall = time.perf_counter() - t0
    tracking.log_children_inputs(parent, per_image.run_id, "ablation")
    _log_summary(parent, summary, per_image, wall, register=register)
    return summary, wall


def plan_lines(config_file=None, overrides=(), seeds: int | None = None, resume: str | None = None) -> list[str]:
    """`segnet ablate --plan`: the parent run, found (same hash, or ``resume``) or created as `ablate` does
    but then let go (its lock released, nothing trained; it stays RUNNING until a `--summarize` finds every
    child finished), and one self-contained shell command per child not finished yet, for a scheduler of
    one's own (``children.unfinished_commands``)."""
    from segnet import tracking

    p = plan(config_file, overrides, seeds)
    _register_name(p)
    uri = tracking.tracking_uri(p.children[0].cfg)
    parent, lock = _find_or_create_parent(uri, p, resume)
    lock.release()
    _announce(p, parent.run_id)
    return unfinished_commands(uri, p.experiment, parent.run_id, p.children, p.profile, ID_TAG, "ablate")


@dataclass
class Recorded:
    """An ablation as its parent run recorded it (params ``ablation.*`` and the reference child's config):
    what `--summarize` needs, on any machine, without the ablation file or the overrides."""

    experiment: str
    variants: list[str]  # the reference first
    bootstrap: int
    register: str | None
    labels: dict[tuple[str, int, int], str]  # every planned child, (variant, seed, fold) -> its label


def recorded(info) -> Recorded:
    """The ``Recorded`` ablation of a parent run (an MLflow ``Run``)."""
    prm = info.data.params
    try:
        variants, seed = prm["ablation.variants"].split(","), int(prm["train.seed"])
        seeds = range(seed, seed + int(prm["ablation.seeds"]))
        folds = [int(k) for k in prm.get("ablation.folds", prm.get("data.fold", "0")).split(",")]
        labels = {(v, s, k): _label(v, s, k, len(folds)) for v in variants for s in seeds for k in folds}
        register = prm.get("tracking.register", "null")
        return Recorded(prm["tracking.experiment"], variants, int(prm["ablation.bootstrap"]),
                        None if register == "null" else register, labels)
    except (KeyError, ValueError) as e:
        raise SegnetError(f"ablation run '{info.info.run_id}' has no usable param {e}; summarize it with "
                          "`segnet ablate` and its ablation file") from None


def summarize_run(run_id: str, overrides=()) -> pd.DataFrame:
    """`segnet ablate --summarize ID`: the summary of the children finished so far, wherever they ran,
    logged to the parent exactly as the end of `ablate` logs it (``_conclude``); the missing children
    named in one line on stderr. The parent ends FINISHED when every child has finished (then, with
    ``tracking.register``, the best variant is registered); otherwise its status is left as it is.
    ``overrides``: only ``tracking.uri=`` (the store), everything else is the parent's."""
    from segnet.runs import store_uri

    extra = [o for o in overrides if o.partition("=")[0].strip() != "tracking.uri"]
    if extra:
        raise ConfigError(f"--summarize reads the ablation from its parent run; '{extra[0]}' has no say there "
                          "(only tracking.uri= does)")
    uri = store_uri(overrides)
    info = parent_run(uri, run_id, "ablation")
    rec = recorded(info)
    missing, span = finished_so_far(uri, info, rec.experiment, rec.labels, ID_TAG)
    if missing:
        print(f"ablate: {len(missing)} of {len(rec.labels)} children not finished yet: {', '.join(missing)}",
              file=sys.stderr, flush=True)
    with held_parent(uri, run_id, "ablation") as parent:
        summary, _ = _conclude(uri, rec, parent, time.perf_counter() - span, None if missing else rec.register)
        if not missing:
            parent.end("FINISHED")
    n = len(rec.labels)
    print(summary_markdown(summary), flush=True)
    print(f"ablation_run_id: {run_id}  ({n - len(missing)} of {n} children finished; parent "
          f"{'FINISHED' if not missing else 'left ' + info.info.status})", flush=True)
    return summary


def _find_or_create_parent(uri, p: AblationPlan, resume: str | None):
    """The parent run (found by ``--resume`` or the ablation hash, else new) and its lock: an
    ablation that is still running elsewhere on this machine is refused, not joined."""
    params = {"ablation.file": str(p.file), "ablation.variants": ",".join(p.variants),
              "ablation.seeds": p.n_seeds, "ablation.folds": ",".join(map(str, p.folds)),
              "ablation.bootstrap": p.bootstrap,
              **{k: v for k, v in p.children[0].cfg.flat().items()
                 if not k.startswith(("model.", "decoder.")) and not (k == "data.fold" and len(p.folds) > 1)}}
    spec = ParentSpec("ablation", p.hash, p.experiment, "ablation", tags={"segnet.reference": p.variants[0]},
                      path_hash=p.path_hash,
                      params=params, texts={"ablation.yaml": Path(p.file).read_text()},
                      resume_hint="resume it with the same file, seeds and overrides", who="ablate")
    return find_or_create_parent(uri, spec, resume)


SUMMARY_METRICS = {
    "tgs_map": "best_val_tgs_map", "val_iou": "best_val_iou", "tgs_map_tuned": "val_tgs_map_tuned",
    "artifact_periodic_energy": "artifact_periodic_energy", "artifact_excess": "artifact_excess",
    "artifact_const_response": "artifact_const_response",
    "artifact_const_response_init": "artifact_const_response_init",
    "artifact_overlap_unevenness": "artifact_overlap_unevenness", "params": "params_count",
    **{k: f"val_{k}" for k in GAP_PARTS},  # where the final score is lost (segmentation.score_gaps)
}


def _val_scores(uri: str, run_id: str, tmp: str | Path) -> pd.Series:
    """A finished run's per-image final tgs scores (flip TTA, tuned threshold), indexed by image id."""
    from segnet import tracking

    csv = tracking.download_artifact(uri, run_id, "predictions/val_scores.csv", Path(tmp) / run_id)
    return pd.read_csv(csv, dtype={"id": str}).set_index("id")["tgs"]


def _interval(table: pd.DataFrame, n: int, reference: str):
    """The hierarchical paired bootstrap (``segnet.stats``, seed 0) of a per-replicate, per-image score
    table (``variant, replicate, fold, image, score``) against ``reference``: what `ablate` and
    `compare` both report, so the same runs get the same intervals from either. Returns a
    ``stats.Bootstrap``."""
    from segnet import stats

    try:
        return stats.bootstrap(table, reference=reference, n=n, seed=0)
    except ValueError as e:
        raise SegnetError(f"bootstrap: {e}") from None


def _scores_rows(variant: str, run_id: str, fold: int, scores: pd.Series) -> pd.DataFrame:
    return pd.DataFrame({"variant": variant, "replicate": run_id, "fold": fold,
                         "image": scores.index.astype(str), "score": scores.to_numpy(float)})


def summarize(uri, p: AblationPlan | Recorded, parent_id: str) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Per variant: its replicates (each finished child run: a seed of a fold), the mean and spread of
    every metric over them, and the hierarchical paired bootstrap of its final score against the
    reference (``segnet.stats``). The verdict (best variant, whether its lead survives the intervals)
    rides along in ``summary.attrs["verdict"]``. Returns (summary, children table).

    Of ``p`` only ``experiment``, ``variants`` (the reference first) and ``bootstrap`` are read: an
    ``AblationPlan``, or a ``Recorded`` one (`--summarize`)."""
    from segnet import tracking

    runs = finished_runs(uri, p.experiment, parent_id, ID_TAG)
    order = {v: i for i, v in enumerate(p.variants)}
    runs = sorted((r for r in runs if r.data.tags.get("segnet.variant") in order),
                  key=lambda r: (order[r.data.tags["segnet.variant"]], fold_of(r), int(r.data.tags["segnet.seed"]),
                                 r.info.run_id))
    rows, parts = [], []
    c = tracking.client(uri)
    with tempfile.TemporaryDirectory() as tmp:
        for r in runs:
            v, s, fold = r.data.tags["segnet.variant"], int(r.data.tags["segnet.seed"]), fold_of(r)
            row = {"variant": v, "seed": s, "fold": fold, "run_id": r.info.run_id}
            row.update({k: r.data.metrics.get(m, np.nan) for k, m in SUMMARY_METRICS.items()})
            for m in ("train_images_per_s", "epoch_time_s"):
                hist = [x.value for x in c.get_metric_history(r.info.run_id, m)]
                row[m] = float(np.median(hist)) if hist else np.nan
            rows.append(row)
            parts.append(_scores_rows(v, r.info.run_id, fold, _val_scores(uri, r.info.run_id, tmp)))
    runs_df = pd.DataFrame(rows)
    ref = p.variants[0]
    if runs_df.empty or ref not in set(runs_df.variant):
        raise SegnetError(f"ablation {parent_id}: the reference variant '{ref}' has no finished child to compare with")
    boot = _interval(pd.concat(parts, ignore_index=True), p.bootstrap, ref)
    out = []
    for b in boot.table.to_dict("records"):
        sub = runs_df[runs_df.variant == b["variant"]]
        row = dict(b)
        for k in list(SUMMARY_METRICS) + ["train_images_per_s", "epoch_time_s"]:
            # where the score is lost must add up with final_mean: NaN unless every replicate measured it
            skipna = k not in GAP_PARTS
            row[f"{k}_mean"] = sub[k].mean(skipna=skipna)
            row[f"{k}_std"] = sub[k].std(ddof=1, skipna=skipna) if len(sub) > 1 else 0.0
        out.append(row)
    summary = pd.DataFrame(out)
    summary.attrs["verdict"] = {**boot.lead(), "n_images": boot.n_images, "bootstrap": p.bootstrap}
    return summary, runs_df


def compare_runs(uri: str, ref_id: str, run_ids: list[str], n: int = 2000) -> pd.DataFrame:
    """Paired bootstrap of per-image final tgs scores of any finished runs against a reference run.

    Each run is one training replicate of its own variant, so this is the ablation's statistic
    (``segnet.stats``, same seed) with one replicate each: the same runs get the same interval from
    `segnet ablate` and from here, and it covers image sampling only (``interval`` = ``images``).
    The runs need not belong to one ablation (different schedules, decoders, datasets options), but
    they must have been evaluated on the same validation images; an image missing from either is an error.
    One row per run: ``run_id, final, ref_final, diff_mean, diff_lo, diff_hi, interval, significant,
    p_best``; the reference's ``p_best`` is in ``attrs["ref_p_best"]``, every run's MLflow metrics in
    ``attrs["metrics"]`` (run id -> {name: value}).
    """
    from segnet import tracking

    if n < 100:
        raise SegnetError(f"bootstrap resamples must be >= 100; got {n}")
    seen = {ref_id}
    for run_id in run_ids:
        if run_id in seen:
            raise SegnetError(f"run '{run_id}' is given twice; compare distinct runs")
        seen.add(run_id)

    metrics = {}

    def scores(run_id: str, tmp: str) -> pd.Series:
        # an unknown id: "not found", not "has no artifact"
        metrics[run_id] = tracking.get_run(uri, run_id).data.metrics
        return _val_scores(uri, run_id, tmp)

    with tempfile.TemporaryDirectory() as tmp:
        ref = scores(ref_id, tmp)
        parts = [_scores_rows(ref_id, ref_id, 0, ref)]
        for run_id in run_ids:
            s = scores(run_id, tmp)
            if set(s.index) != set(ref.index):
                raise SegnetError(f"run '{run_id}' was validated on other images than run '{ref_id}' "
                                  f"({len(s.index.symmetric_difference(ref.index))} ids differ); "
                                  "compare runs of the same data and fold")
            parts.append(_scores_rows(run_id, run_id, 0, s))
    boot = _interval(pd.concat(parts, ignore_index=True), n, ref_id)
    rows = {r["variant"]: r for r in boot.table.to_dict("records")}
    keys = ["diff_mean", "diff_lo", "diff_hi", "interval", "significant", "p_best"]
    df = pd.DataFrame([{"run_id": run_id, "final": rows[run_id]["final_mean"], "ref_final": rows[ref_id]["final_mean"],
                        **{k: rows[run_id][k] for k in keys}} for run_id in run_ids])
    df.attrs.update(ref_p_best=rows[ref_id]["p_best"], n_images=boot.n_images, metrics=metrics)
    return df


def compare(ref_id: str, run_ids: list[str], n: int = 2000) -> pd.DataFrame:
    """`segnet compare`: print each run's final score minus the reference's with its 95% interval."""
    from segnet import tracking

    uri = tracking.tracking_uri()
    df = compare_runs(uri, ref_id, run_ids, n)

    def lost(run_id: str) -> str:  # where the run's final score is lost (runs logged before: n/a)
        m = df.attrs["metrics"][run_id]
        return "/".join(f"{m[f'val_{k}']:.3f}" if f"val_{k}" in m else "n/a" for k in GAP_PARTS)

    print(f"reference {ref_id}: final tgs_map {df.ref_final.iloc[0]:.4f} (flip TTA, tuned threshold)  "
          f"p_best {df.attrs['ref_p_best']:.2f}  lost fp/fn/s/m/l {lost(ref_id)}")
    for r in df.itertuples():
        mark = " *" if r.significant else ""
        print(f"{r.run_id}: final {r.final:.4f}  diff {r.diff_mean:+.4f} "
              f"[{r.diff_lo:+.4f}, {r.diff_hi:+.4f}]{mark}  p_best {r.p_best:.2f}  lost fp/fn/s/m/l {lost(r.run_id)}")
    print(f"diff: final minus the reference's, 95% paired bootstrap interval over the {df.attrs['n_images']} "
          f"validation images ({n} resamples); * it excludes 0. Each run is one training replicate, so the "
          "interval covers image sampling only, not seed-to-seed training noise (for that: an ablation with "
          "seeds >= 2). p_best: share of resamples in which the run has the best mean. lost fp/fn/s/m/l: "
          "where the final score falls short of 1 (empty images given a mask, salt images predicted empty, "
          "shapes of small/medium/large masks; README \"Where the score is lost\").")
    return df


def summary_markdown(df: pd.DataFrame) -> str:
    """The summary as a markdown table (the first row is the reference), the columns explained under it,
    and the verdict when ``df.attrs["verdict"]`` holds one (``summarize`` puts it there)."""
    from segnet import stats

    cols = ["variant", "replicates", "tgs_map", "val_iou", "final", "final - ref [95% CI]", "covers", "p_best",
            "lost fp/fn/s/m/l", "periodic", "excess", "const", "const@init", "uneven", "params", "img/s", "epoch s"]
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for i, (_, r) in enumerate(df.iterrows()):
        lines.append("| " + " | ".join([
            r.variant, str(int(r.replicates)), f"{r.tgs_map_mean:.4f} ± {r.tgs_map_std:.4f}",
            f"{r.val_iou_mean:.4f} ± {r.val_iou_std:.4f}", f"{r.final_mean:.4f} ± {r.final_std:.4f}",
            "reference" if i == 0 else f"{r.diff_mean:+.4f} [{r.diff_lo:+.4f}, {r.diff_hi:+.4f}]" + (
                (" **" if r.interval == "images+training" else " *") if r.significant else ""),
            r.interval, f"{r.p_best:.2f}", "/".join(f"{r[f'{k}_mean']:.3f}" for k in GAP_PARTS),
            f"{r.artifact_periodic_energy_mean:.4f}",
            f"{r.artifact_excess_mean:.2f}", f"{r.artifact_const_response_mean:.3f}",
            f"{r.artifact_const_response_init_mean:.3f}", f"{r.artifact_overlap_unevenness_mean:.2f}",
            f"{int(r.params_mean):,}", f"{r.train_images_per_s_mean:.0f}", f"{r.epoch_time_s_mean:.1f}",
        ]) + " |")
    lines += [
        "",
        "Mean ± std over the replicates (child runs: seeds, and folds). tgs_map, val_iou: the best epoch "
        "(threshold 0.5); final: that checkpoint's final evaluation (flip TTA, tuned threshold), whose "
        "per-image scores the bootstrap compares.",
        "final - ref: the variant's mean final score minus the reference's, with its 95% hierarchical paired "
        "bootstrap interval (each variant's replicates resampled, then the validation images, the same "
        "images for every variant). covers: images+training when the variant and the reference have 2 or "
        "more replicates of a fold (the interval includes seed-to-seed training noise), images when they "
        "have one (image sampling only: one more seed could reverse it). ** the interval excludes 0 and "
        "includes training noise; * it excludes 0 for image sampling only. p_best: the share of resamples "
        "in which the variant has the best mean final score.",
        "lost fp/fn/s/m/l: where the final score falls short of 1, as shares of all images' score (they add "
        "up to 1 - final): fp, images without salt given a mask; fn, salt images predicted empty; s/m/l, "
        "the IoU shortfall (shape, boundary) on salt images given a mask, by salt coverage (<=10%, 10-50%, "
        ">50%).",
    ]
    if df.attrs.get("verdict"):
        lines += ["", stats.verdict_sentence(df.attrs["verdict"])]
    return "\n".join(lines)


def _log_summary(parent, summary: pd.DataFrame, runs_df: pd.DataFrame, wall: float,
                 register: str | None = None) -> None:
    """The parent's artifacts (summary.csv/.md, children.csv, charts), metrics and tags. The tag
    ``segnet.best_variant`` names a winner only when its lead survives the intervals (its difference
    against every other variant excludes 0), else ``none``; ``segnet.best_mean_variant`` names the best
    mean final score either way, and it is what ``register`` registers."""
    from segnet import plots

    parent.log_dataframe(summary, "summary.csv")
    parent.log_dataframe(runs_df, "children.csv")
    parent.log_text(summary_markdown(summary), "summary.md")
    ref = summary.variant.iloc[0]
    parent.log_figure(plots.plot_ablation(summary, reference=ref), "plots/ablation.png")
    parent.log_figure(plots.plot_bootstrap_ci(summary, reference=ref), "plots/bootstrap_ci.png")
    parent.log_figure(plots.plot_ablation_gaps(summary), "plots/score_gaps.png")
    verdict = summary.attrs.get("verdict") or {}
    best_name = verdict.get("best", summary.variant[summary.final_mean.idxmax()])
    best = summary.set_index("variant", drop=False).loc[best_name]  # judged on the scores the CIs compare
    metrics = {"wall_time_s": wall, "best_tgs_map_mean": float(best.tgs_map_mean),
               "best_tgs_map_tuned_mean": float(best.tgs_map_tuned_mean), "best_final_mean": float(best.final_mean),
               "best_p_best": float(best.p_best), "n_children": len(runs_df)}
    if np.isfinite(verdict.get("lead_lo", np.nan)):
        metrics["best_lead_lo"] = float(verdict["lead_lo"])
    parent.log_metrics(metrics)
    parent.set_tags({"segnet.best_variant": verdict.get("winner") or "none",
                     "segnet.best_mean_variant": best.variant})
    if register:
        _register_best(parent, best, runs_df, register)


def _register_best(parent, best: pd.Series, runs_df: pd.DataFrame, name: str):
    """The best variant's best seed's run (by its final tgs score) as a version of ``name`` with alias
    champion, tagged with the ablation and the variant's mean scores; the parent is tagged with it."""
    from segnet import runs, tracking

    sub = runs_df[runs_df.variant == best.variant]
    run_id = str(sub.loc[sub.tgs_map_tuned.idxmax(), "run_id"])
    tags = {"segnet.ablation_id": parent.run_id, "segnet.ablation_variants": int(len(set(runs_df.variant))),
            "segnet.ablation_tgs_map_tuned_mean": f"{best.tgs_map_tuned_mean:.4f}",
            "segnet.ablation_tgs_map_mean": f"{best.tgs_map_mean:.4f}"}
    mv = runs.register(run_id, name, tracking.DEFAULT_ALIAS, extra_tags=tags, uri=parent.uri)
    parent.set_tags({"segnet.registered_model": f"{name}/{mv.version}", "segnet.registered_run_id": run_id})
    return mv
