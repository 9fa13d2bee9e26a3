"""Ablation: every decoder variant on the same data, split and seeds; one MLflow parent, nested children.

Restartable: the parent is found again by its ablation hash (or ``--resume ID``); finished children are
skipped and an unfinished one resumes from its last epoch. Each child is a `segnet train` process
(``--jobs N`` at once), so a crash of one cannot take the others down, and Ctrl-C or SIGTERM stops
them all (their runs end KILLED). A running ablation holds a lock: a second `ablate` of the same
config is refused instead of training the same children twice.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import yaml

from segnet import paths
from segnet.config import Config, load_config
from segnet.errors import ConfigError, SegnetError

ABLATION_KEYS = {"profile", "seeds", "bootstrap", "overrides", "variants"}


@dataclass
class Child:
    variant: str
    seed: int
    cfg: Config
    overrides: list[str]  # what `segnet train` needs, with the profile, to resolve exactly ``cfg``


@dataclass
class AblationPlan:
    file: Path
    children: list[Child]
    variants: list[str]
    bootstrap: int
    hash: str
    experiment: str
    profile: Path | None = None


def plan(config_file: str | Path | None, overrides=(), seeds: int | None = None) -> AblationPlan:
    """Read the ablation file and resolve (and so validate) every child's config before any work."""
    f = Path(config_file) if config_file else paths.ABLATION_CONFIG
    if not f.exists():
        raise ConfigError(f"ablation file not found: {f}")
    spec = yaml.safe_load(f.read_text()) or {}
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
    profile = (paths.ROOT / profile) if profile and not Path(profile).is_absolute() else profile
    common = [str(o) for o in spec.get("overrides") or []] + list(overrides)

    children = []
    base = load_config(profile, common)
    for name, var in variants.items():
        if not isinstance(var, dict):
            raise ConfigError(f"{f}: variant '{name}' must be a mapping of key: value")
        var_over = [f"{k}={_yaml_scalar(v)}" for k, v in var.items()]
        for i in range(n_seeds):
            seed = base.train.seed + i
            over = var_over + common + [f"train.seed={seed}", f"tracking.variant={name}"]
            try:
                cfg = load_config(profile, over)
            except ConfigError as e:
                raise ConfigError(f"{f}: variant '{name}': {e}") from None
            children.append(Child(name, seed, cfg, over))
    h = hashlib.sha256(json.dumps([[c.variant, c.seed, c.cfg.hash()] for c in children]).encode()).hexdigest()[:12]
    return AblationPlan(f, children, list(variants), boot, h, base.tracking.experiment,
                        Path(profile) if profile else None)


def _yaml_scalar(v) -> str:
    return yaml.safe_dump(v, default_flow_style=True).strip().removesuffix("...").strip()


def ablate(config_file=None, overrides=(), seeds: int | None = None, jobs: int = 1, resume: str | None = None):
    from segnet import tracking

    p = plan(config_file, overrides, seeds)
    register = p.children[0].cfg.tracking.register
    if register and not p.children[0].cfg.tracking.log_model:
        raise ConfigError(f"tracking.register={register} needs tracking.log_model=true (nothing to register)")
    if jobs < 1:
        raise ConfigError(f"--jobs must be >= 1; got {jobs}")
    uri = tracking.tracking_uri(p.children[0].cfg)
    parent, lock = _find_or_create_parent(uri, p, resume)
    print(f"ablation_run_id: {parent.run_id}  ({len(p.variants)} variants x "
          f"{len(p.children) // len(p.variants)} seeds, hash {p.hash})", flush=True)

    # A restarted ablation adds its time to the time the earlier invocations spent.
    t0 = time.perf_counter() - parent.info().data.metrics.get("wall_time_s", 0.0)
    try:
        with tracking.run_guard(parent):
            done = _finished_children(uri, p.experiment, parent.run_id)
            todo = [c for c in p.children if (c.variant, c.seed) not in done]
            if len(todo) < len(p.children):
                print(f"ablate: {len(p.children) - len(todo)} finished children kept, {len(todo)} to train", flush=True)
            failures = _run_children(todo, p.profile, parent.run_id, jobs)
            if failures:
                raise SegnetError(f"{len(failures)} ablation children failed: " + "; ".join(failures))
            summary, per_image = summarize(uri, p, parent.run_id)
            wall = time.perf_counter() - t0
            _log_summary(parent, summary, per_image, wall, register=register)
    finally:
        lock.release()
    print(summary_markdown(summary), flush=True)
    print(f"ablation_run_id: {parent.run_id}  (wall time {wall / 60:.1f} min)")
    exp_id = parent.info().info.experiment_id
    print(f"review it: make ui  (then {tracking.runs_url(uri, exp_id)})", flush=True)
    return parent.run_id, summary


def _find_or_create_parent(uri, p: AblationPlan, resume: str | None):
    """The parent run (found by ``--resume`` or the ablation hash, else new) and its lock: an
    ablation that is still running elsewhere on this machine is refused, not joined."""
    from segnet import locks, tracking
    from segnet.train import _check_runs_dir, run_dir

    _check_runs_dir()
    if resume:
        info = tracking.get_run(uri, resume)
        if info.data.tags.get("segnet.ablation_hash") != p.hash:
            raise SegnetError(f"ablation run '{resume}' was made from another ablation config; "
                              "resume it with the same file, seeds and overrides")
        lock = locks.lock_run(run_dir(resume), f"ablation {resume}")
        return tracking.reopen_run(uri, resume), lock
    found = tracking.find_runs(uri, p.experiment, f"tags.`segnet.ablation_hash` = '{p.hash}'")
    found = [r for r in found if r.data.tags.get("segnet.role") == "ablation"]
    if found:
        run_id = found[0].info.run_id
        lock = locks.lock_run(run_dir(run_id), f"ablation {run_id} (same config hash)")
        print(f"ablate: continuing ablation {run_id} (same config hash)", flush=True)
        return tracking.reopen_run(uri, run_id), lock
    parent = tracking.create_run(uri, p.experiment, f"ablation-{time.strftime('%m%d-%H%M%S')}",
                                 {"segnet.role": "ablation", "segnet.ablation_hash": p.hash,
                                  "segnet.reference": p.variants[0]})
    try:
        lock = locks.try_lock(run_dir(parent.run_id))
        parent.log_params({"ablation.file": str(p.file), "ablation.variants": ",".join(p.variants),
                           "ablation.seeds": len(p.children) // len(p.variants), "ablation.bootstrap": p.bootstrap,
                           **{k: v for k, v in p.children[0].cfg.flat().items()
                              if not k.startswith(("model.", "decoder."))}})
        parent.log_text(Path(p.file).read_text(), "ablation.yaml")
    except BaseException:
        parent.end("FAILED")
        raise
    return parent, lock


def _finished_children(uri, experiment, parent_id) -> set[tuple[str, int]]:
    from segnet import tracking

    runs = tracking.find_runs(uri, experiment, f"tags.`segnet.ablation_id` = '{parent_id}'", max_results=1000)
    return {(r.data.tags["segnet.variant"], int(r.data.tags["segnet.seed"]))
            for r in runs if r.info.status == "FINISHED" and "best_val_tgs_map" in r.data.metrics}


def child_command(c: Child, profile: Path | None, parent_id: str, jobs: int = 1) -> list[str]:
    """The `segnet train` command line of one child: its config resolves exactly as in ``plan``."""
    argv = [sys.executable, "-m", "segnet", "train"]
    if profile:
        argv += ["--config", str(profile)]
    argv += ["--parent-run-id", parent_id, "--tag", f"segnet.ablation_id={parent_id}",
             "--tag", f"segnet.seed={c.seed}"]
    over = [*c.overrides, "train.resume=true"]
    if jobs > 1 and c.cfg.train.threads == 0:
        over.append(f"train.threads={max(1, (os.cpu_count() or 1) // jobs)}")
    return argv + over


class _ChildProcess:
    """One child training in its own process; its output is printed line by line with its label."""

    def __init__(self, c: Child, argv: list[str]):
        self.child = c
        self.label = f"{c.variant} s{c.seed}"
        env = {**os.environ, "SEGNET_PARENT_PID": str(os.getpid()), "PYTHONUNBUFFERED": "1"}
        self.proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                     bufsize=1, env=env)
        self.last_line = ""
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()

    def _read(self) -> None:
        for line in self.proc.stdout:
            line = line.rstrip()
            if line:
                self.last_line = line
                print(f"[{self.label}] {line}", flush=True)

    def done(self) -> bool:
        if self.proc.poll() is None:
            return False
        self.reader.join(timeout=5)
        return True


def _run_children(todo: list[Child], profile: Path | None, parent_id: str, jobs: int) -> list[str]:
    """Train the children, ``jobs`` at a time, each as a `segnet train` process.

    Ctrl-C or SIGTERM stops the queue and sends SIGTERM to every running child (each ends its run
    KILLED), waits for them, and re-raises; a SIGKILLed parent takes its children with it (see cli).
    """
    queue = list(todo)
    running: list[_ChildProcess] = []
    failures: list[str] = []
    t0, n_done = time.perf_counter(), 0
    try:
        while queue or running:
            while queue and len(running) < jobs:
                c = queue.pop(0)
                print(f"ablate: [{len(todo) - len(queue)}/{len(todo)}] start {c.variant} seed {c.seed}", flush=True)
                running.append(_ChildProcess(c, child_command(c, profile, parent_id, jobs)))
            time.sleep(0.2)
            for cp in [cp for cp in running if cp.done()]:
                running.remove(cp)
                n_done += 1
                elapsed = time.perf_counter() - t0
                eta = elapsed / n_done * (len(todo) - n_done)
                status = "finished" if cp.proc.returncode == 0 else f"FAILED (exit {cp.proc.returncode})"
                print(f"ablate: {cp.child.variant} seed {cp.child.seed} {status}; {n_done}/{len(todo)} done, "
                      f"{len(running)} running, {len(queue)} pending, {elapsed / 60:.1f} min elapsed, "
                      f"~{eta / 60:.1f} min left", flush=True)
                if cp.proc.returncode != 0:
                    failures.append(f"{cp.child.variant} seed {cp.child.seed}: {cp.last_line or 'no output'}")
    except KeyboardInterrupt:
        print(f"ablate: stopping {len(running)} running children ({len(queue)} not started)", flush=True)
        _stop(running)
        raise
    return failures


def _stop(running: list[_ChildProcess], grace: float = 60.0) -> None:
    """SIGTERM to each child, then wait (each ends its run KILLED); SIGKILL what outlives ``grace``."""
    for cp in running:
        with contextlib.suppress(ProcessLookupError):
            cp.proc.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + grace
    for cp in running:
        try:
            cp.proc.wait(timeout=max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            cp.proc.kill()
            cp.proc.wait()


def paired_bootstrap(diff: np.ndarray, n: int, seed: int = 0) -> tuple[float, float, float]:
    """Mean of per-image differences and its 95% percentile bootstrap interval."""
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, len(diff), size=(n, len(diff)))
    means = diff[idx].mean(axis=1)
    return float(diff.mean()), float(np.percentile(means, 2.5)), float(np.percentile(means, 97.5))


SUMMARY_METRICS = {
    "tgs_map": "best_val_tgs_map", "val_iou": "best_val_iou", "tgs_map_tuned": "val_tgs_map_tuned",
    "artifact_periodic_energy": "artifact_periodic_energy", "artifact_excess": "artifact_excess",
    "artifact_const_response": "artifact_const_response",
    "artifact_const_response_init": "artifact_const_response_init",
    "artifact_overlap_unevenness": "artifact_overlap_unevenness", "params": "params_count",
}


def _val_scores(uri: str, run_id: str, tmp: str | Path) -> pd.Series:
    """A finished run's per-image final tgs scores (flip TTA, tuned threshold), indexed by image id."""
    from segnet import tracking

    csv = tracking.download_artifact(uri, run_id, "predictions/val_scores.csv", Path(tmp) / run_id)
    return pd.read_csv(csv, dtype={"id": str}).set_index("id")["tgs"]


def _interval(diff: np.ndarray, n: int) -> dict:
    """The paired-bootstrap columns of a per-image difference: mean, 95% bounds, whether they exclude 0."""
    mean, lo, hi = paired_bootstrap(diff, n)
    return {"diff_mean": mean, "diff_lo": lo, "diff_hi": hi, "significant": bool(lo > 0 or hi < 0)}


def summarize(uri, p: AblationPlan, parent_id: str) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Per variant: mean and spread over seeds, and the paired bootstrap CI against the reference."""
    from segnet import tracking

    runs = tracking.find_runs(uri, p.experiment, f"tags.`segnet.ablation_id` = '{parent_id}'", max_results=1000)
    runs = [r for r in runs if r.info.status == "FINISHED" and "best_val_tgs_map" in r.data.metrics]
    rows, per_image = [], {}
    c = tracking.client(uri)
    with tempfile.TemporaryDirectory() as tmp:
        for r in runs:
            v, s = r.data.tags["segnet.variant"], int(r.data.tags["segnet.seed"])
            row = {"variant": v, "seed": s, "run_id": r.info.run_id}
            row.update({k: r.data.metrics.get(m, np.nan) for k, m in SUMMARY_METRICS.items()})
            for m in ("train_images_per_s", "epoch_time_s"):
                hist = [x.value for x in c.get_metric_history(r.info.run_id, m)]
                row[m] = float(np.median(hist)) if hist else np.nan
            rows.append(row)
            per_image[(v, s)] = _val_scores(uri, r.info.run_id, tmp)
    runs_df = pd.DataFrame(rows)
    ref = p.variants[0]
    out = []
    for v in p.variants:
        sub = runs_df[runs_df.variant == v]
        if sub.empty:
            continue
        row = {"variant": v, "seeds": len(sub)}
        for k in list(SUMMARY_METRICS) + ["train_images_per_s", "epoch_time_s"]:
            row[f"{k}_mean"] = sub[k].mean()
            row[f"{k}_std"] = sub[k].std(ddof=1) if len(sub) > 1 else 0.0
        seeds = sorted(set(sub.seed) & set(runs_df[runs_df.variant == ref].seed))
        if v != ref and seeds:
            a = pd.concat([per_image[(v, s)] for s in seeds], axis=1).mean(axis=1)
            b = pd.concat([per_image[(ref, s)] for s in seeds], axis=1).mean(axis=1)
            common = a.index.intersection(b.index)
            row.update(_interval((a[common] - b[common]).to_numpy(), p.bootstrap))
        else:
            row.update(diff_mean=0.0, diff_lo=0.0, diff_hi=0.0, significant=False)
        out.append(row)
    return pd.DataFrame(out), runs_df


def compare_runs(uri: str, ref_id: str, run_ids: list[str], n: int = 2000) -> pd.DataFrame:
    """Paired bootstrap of per-image final tgs scores of any finished runs against a reference run.

    The runs need not belong to one ablation (different schedules, decoders, datasets options), but
    they must have been evaluated on the same validation images; an image missing from either is an error.
    """
    from segnet import tracking

    if n < 100:
        raise SegnetError(f"bootstrap resamples must be >= 100; got {n}")

    def scores(run_id: str, tmp: str) -> pd.Series:
        tracking.get_run(uri, run_id)  # an unknown id: "not found", not "has no artifact"
        return _val_scores(uri, run_id, tmp)

    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        ref = scores(ref_id, tmp)
        for run_id in run_ids:
            s = scores(run_id, tmp)
            if set(s.index) != set(ref.index):
                raise SegnetError(f"run '{run_id}' was validated on other images than run '{ref_id}' "
                                  f"({len(s.index.symmetric_difference(ref.index))} ids differ); "
                                  "compare runs of the same data and fold")
            rows.append({"run_id": run_id, "final": s.mean(), "ref_final": ref.mean(),
                         **_interval((s - ref[s.index]).to_numpy(), n)})
    return pd.DataFrame(rows)


def compare(ref_id: str, run_ids: list[str], n: int = 2000) -> pd.DataFrame:
    """`segnet compare`: print each run's final score minus the reference's with its 95% interval."""
    from segnet import tracking

    uri = tracking.tracking_uri()
    df = compare_runs(uri, ref_id, run_ids, n)
    print(f"reference {ref_id}: final tgs_map {df.ref_final.iloc[0]:.4f} (flip TTA, tuned threshold)")
    for r in df.itertuples():
        mark = "  ** interval excludes 0" if r.significant else ""
        print(f"{r.run_id}: final {r.final:.4f}  diff {r.diff_mean:+.4f} "
              f"[{r.diff_lo:+.4f}, {r.diff_hi:+.4f}]{mark}")
    return df


def summary_markdown(df: pd.DataFrame) -> str:
    """The summary as a markdown table. tgs_map and val_iou are the best epoch's (threshold 0.5, no TTA);
    final is the final evaluation of that checkpoint (flip TTA, tuned threshold), whose per-image scores
    the paired bootstrap compares, so the difference column is a difference of final scores."""
    cols = ["variant", "seeds", "tgs_map", "val_iou", "final", "final - ref [95% CI]", "periodic", "excess",
            "const", "const@init", "uneven", "params", "img/s", "epoch s"]
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for _, r in df.iterrows():
        ci = "reference" if r.diff_lo == r.diff_hi == 0 else (
            f"{r.diff_mean:+.4f} [{r.diff_lo:+.4f}, {r.diff_hi:+.4f}]{' **' if r.significant else ''}")
        lines.append("| " + " | ".join([
            r.variant, str(int(r.seeds)), f"{r.tgs_map_mean:.4f} ± {r.tgs_map_std:.4f}",
            f"{r.val_iou_mean:.4f} ± {r.val_iou_std:.4f}", f"{r.tgs_map_tuned_mean:.4f} ± {r.tgs_map_tuned_std:.4f}", ci, f"{r.artifact_periodic_energy_mean:.4f}",
            f"{r.artifact_excess_mean:.2f}", f"{r.artifact_const_response_mean:.3f}",
            f"{r.artifact_const_response_init_mean:.3f}", f"{r.artifact_overlap_unevenness_mean:.2f}",
            f"{int(r.params_mean):,}", f"{r.train_images_per_s_mean:.0f}", f"{r.epoch_time_s_mean:.1f}",
        ]) + " |")
    lines.append("\nfinal: flip TTA and the tuned threshold (the scores the paired bootstrap compares); "
                 "** the 95% interval of the difference excludes 0")
    return "\n".join(lines)


def _log_summary(parent, summary: pd.DataFrame, runs_df: pd.DataFrame, wall: float,
                 register: str | None = None) -> None:
    from segnet import plots

    parent.log_dataframe(summary, "summary.csv")
    parent.log_dataframe(runs_df, "children.csv")
    parent.log_text(summary_markdown(summary), "summary.md")
    ref = summary.variant.iloc[0]
    parent.log_figure(plots.plot_ablation(summary, reference=ref), "plots/ablation.png")
    parent.log_figure(plots.plot_bootstrap_ci(summary, reference=ref), "plots/bootstrap_ci.png")
    best = summary.loc[summary.tgs_map_tuned_mean.idxmax()]  # judged on the scores the CIs compare
    parent.log_metrics({"wall_time_s": wall, "best_tgs_map_mean": float(best.tgs_map_mean),
                        "best_tgs_map_tuned_mean": float(best.tgs_map_tuned_mean),
                        "n_children": len(runs_df)})
    parent.set_tags({"segnet.best_variant": best.variant})
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
