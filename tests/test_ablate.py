"""Ablation: planning and validation, the paired bootstrap, and a small end-to-end run reviewed over REST."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

from segnet import paths
from segnet.ablate import SUMMARY_METRICS, plan, summary_markdown
from segnet.cli import main as cli_main
from segnet.config import load_config
from segnet.errors import ConfigError
from segnet.models.decoders import DECODERS

from .procs import mlflow_server, rest_get, rest_post, run, run_at_once, store_uri
from .test_train import tiny_overrides


def _write(tmp_path: Path, spec: dict) -> Path:
    f = tmp_path / "ablation.yaml"
    f.write_text(yaml.safe_dump(spec))
    return f


def test_default_ablation_plans_eight_variants():
    p = plan(None)
    assert p.variants[0] == "transposed_k3" and len(p.variants) == 8
    default = yaml.safe_load((paths.CONFIGS / "ablation" / "default.yaml").read_text())["variants"]
    assert {c.cfg.model.decoder for c in p.children} == {v["model.decoder"] for v in default.values()}
    assert {c.cfg.model.decoder for c in p.children} <= set(DECODERS)  # every child's decoder is registered
    assert len({c.cfg.data.fold_seed for c in p.children}) == 1  # one split for every child
    assert plan(None, seeds=3).children[-1].seed == p.children[0].seed + 2


def test_components_ablation_switches_one_component_per_variant():
    """configs/ablation/components.yaml: the reference is configs/tgs.yaml itself, every other variant
    differs from it in exactly the keys it names (one component each)."""
    p = plan(paths.CONFIGS / "ablation" / "components.yaml")
    ref, *others = p.children
    assert ref.variant == "reference" and p.profile.name == "tgs.yaml"
    base = {k: v for k, v in ref.cfg.flat().items() if k != "tracking.variant"}
    spec = yaml.safe_load((paths.CONFIGS / "ablation" / "components.yaml").read_text())["variants"]
    for c in others:
        diff = {k for k, v in c.cfg.flat().items() if k != "tracking.variant" and base[k] != v}
        assert diff == set(spec[c.variant]), (c.variant, diff)


def test_decoders_on_the_strong_model_use_tgs_best():
    """configs/ablation/decoders_best.yaml: transposed k3, upsampling bilinear and maxunpool, each on
    configs/tgs_best.yaml as it is apart from its decoder, on one split."""
    p = plan(paths.CONFIGS / "ablation" / "decoders_best.yaml")
    assert p.profile.name == "tgs_best.yaml"
    assert [(c.cfg.model.decoder, c.cfg.decoder.get("kernel_size") or c.cfg.decoder.get("interpolation")) for c in p.children] == [
        ("transposed", 3), ("upsampling", "bilinear"), ("maxunpool", None)]
    best = load_config(paths.CONFIGS / "tgs_best.yaml").flat()
    for c in p.children:
        diff = {k for k, v in c.cfg.flat().items() if k != "tracking.variant" and best[k] != v}
        assert diff <= {"model.decoder", "decoder.kernel_size", "decoder.interpolation"}, (c.variant, diff)
        assert c.cfg.model.deep_supervision


@pytest.mark.parametrize("spec, culprit", [
    ({"variants": {"a": {"model.decoder": "transposed"}}, "sedes": 2}, "sedes"),
    ({"variants": {"a": {"model.decoder": "nope"}}}, "variant 'a'"),
    ({"variants": {"b": {"model.decoder": "transposed", "decoder.interpolation": "nearest"}}}, "variant 'b'"),
    ({"variants": {}}, "variants"),
    ({"variants": {"a": {"model.decoder": "transposed"}}, "seeds": 0}, "seeds"),
])
def test_bad_ablation_file_fails_before_training(tmp_path, spec, culprit):
    with pytest.raises(ConfigError, match=culprit):
        plan(_write(tmp_path, spec))


def test_compare_names_the_missing_run(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    assert cli_main(["compare", "no_such_ref", "no_such_run"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "no_such_ref" in err[0] and "not found" in err[0]
    assert cli_main(["compare", "a", "b", "--bootstrap", "5"]) == 2
    assert ">= 100" in capsys.readouterr().err


SUMMARY_COLUMNS = ["variant", "replicates", "final_mean", "final_std", "diff_mean", "diff_lo", "diff_hi", "interval",
                   "significant", "p_best",
                   *[f"{k}_{s}" for k in [*SUMMARY_METRICS, "train_images_per_s", "epoch_time_s"] for s in ("mean", "std")]]


def test_summary_table_shows_the_final_scores_the_interval_compares():
    row = {f"{k}_{s}": 0.0 for k in [*SUMMARY_METRICS, "train_images_per_s", "epoch_time_s"] for s in ("mean", "std")}
    ref = {**row, "variant": "a", "replicates": 1, "tgs_map_mean": 0.70, "final_mean": 0.7358, "final_std": 0.0,
           "diff_mean": 0.0, "diff_lo": 0.0, "diff_hi": 0.0, "interval": "images", "significant": False,
           "p_best": 0.0}
    other = {**ref, "variant": "b", "tgs_map_mean": 0.7317, "final_mean": 0.7958,
             "diff_mean": 0.06, "diff_lo": 0.0337, "diff_hi": 0.0888, "significant": True, "p_best": 1.0}
    seeded = {**other, "variant": "c", "replicates": 3, "final_std": 0.05, "interval": "images+training"}
    noisy = {**seeded, "variant": "d", "diff_lo": -0.01, "significant": False}
    table = summary_markdown(pd.DataFrame([ref, other, seeded, noisy])).splitlines()
    assert "| variant | replicates | tgs_map | val_iou | final | final - ref [95% CI] | covers | p_best |" in table[0]
    assert "| 0.7358 ± 0.0000 | reference | images | 0.00 |" in table[2]
    assert "| 0.7958 ± 0.0000 | +0.0600 [+0.0337, +0.0888] * | images | 1.00 |" in table[3]  # images only: *
    assert "| 0.7958 ± 0.0500 | +0.0600 [+0.0337, +0.0888] ** | images+training | 1.00 |" in table[4]
    assert "| +0.0600 [-0.0100, +0.0888] | images+training |" in table[5]  # includes 0: no mark
    text = "\n".join(table[6:])
    assert "** the interval excludes 0 and includes training noise; * it excludes 0 for image sampling only" in text
    gaps = summary_markdown(pd.DataFrame([{**ref, "gap_empty_fp_mean": 0.12, "gap_empty_fn_mean": 0.05,
                                           "gap_small_mean": 0.04, "gap_medium_mean": 0.03,
                                           "gap_large_mean": 0.0208}])).splitlines()
    assert "| p_best | lost fp/fn/s/m/l | periodic |" in gaps[0]
    assert "| 0.00 | 0.120/0.050/0.040/0.030/0.021 |" in gaps[2]
    assert "lost fp/fn/s/m/l: where the final score falls short of 1" in text


def _fake_ablation(monkeypatch, per_run: dict, unlogged: dict | None = None):
    """``summarize`` over fake finished child runs: {(variant, seed, fold or None): per-image scores}; each
    run's metrics are its mean score, but those ``unlogged`` {key: [metric, ...]} names (a run logged before
    segnet measured them)."""
    from types import SimpleNamespace as NS

    from segnet import ablate, tracking

    runs = []
    for k, ((v, seed, fold), scores) in enumerate(per_run.items()):
        tags = {"segnet.variant": v, "segnet.seed": str(seed), **({"segnet.fold": str(fold)} if fold is not None else {})}
        metrics = {m: float(np.mean(scores)) for m in SUMMARY_METRICS.values()
                   if m not in (unlogged or {}).get((v, seed, fold), [])}
        runs.append(NS(info=NS(run_id=f"{k:032x}", status="FINISHED"),
                       data=NS(tags=tags, metrics=metrics, params={"data.fold": "0"})))
    scores = {r.info.run_id: s for r, s in zip(runs, per_run.values(), strict=True)}
    monkeypatch.setattr(tracking, "find_runs", lambda *a, **k: list(reversed(runs)))  # newest first, as MLflow
    monkeypatch.setattr(tracking, "client", lambda uri: NS(get_metric_history=lambda run_id, m: []))
    monkeypatch.setattr(ablate, "_val_scores", lambda uri, run_id, tmp: scores[run_id])
    variants = list(dict.fromkeys(v for v, _, _ in per_run))
    p = NS(experiment="test", variants=variants, bootstrap=500, children=[NS(cfg=NS(data=NS(fold=0)))])
    return ablate.summarize("sqlite://", p, "parent")


def test_a_variant_shows_where_its_score_is_lost_only_when_every_replicate_measured_it(monkeypatch):
    """A resumed ablation whose older children have no val_gap_* metrics: that variant's gap means are
    NaN (they must add up with final_mean, which covers every replicate), the other metrics still average."""
    ids = [f"im{i}" for i in range(50)]
    s = lambda x: pd.Series(x, index=ids)  # noqa: E731
    base = np.linspace(0.2, 0.9, 50)
    summary, _ = _fake_ablation(monkeypatch, {("ref", 42, None): s(base), ("ref", 43, None): s(base),
                                              ("new", 42, None): s(base + 0.05), ("new", 43, None): s(base + 0.1)},
                                unlogged={("ref", 42, None): ["val_gap_empty_fp"]})
    row = summary.set_index("variant")
    assert np.isnan(row.gap_empty_fp_mean["ref"]) and np.isnan(row.gap_empty_fp_std["ref"])
    assert row.gap_small_mean["ref"] == pytest.approx(base.mean())  # measured by both replicates
    assert row.gap_empty_fp_mean["new"] == pytest.approx(base.mean() + 0.075)
    assert "| nan/" in summary_markdown(summary).splitlines()[2]


def test_summary_csv_columns_replicates_and_verdict(monkeypatch):
    """Each finished child is one replicate (its fold from the tag ``segnet.fold``); summary.csv has
    exactly the documented columns; the winner is named only when its lead survives the intervals."""
    from types import SimpleNamespace as NS

    from segnet import ablate, plots

    ids = [f"im{i}" for i in range(200)]
    base = np.random.default_rng(0).uniform(0.3, 0.9, 200)
    s = lambda x: pd.Series(x, index=ids)  # noqa: E731
    summary, runs_df = _fake_ablation(monkeypatch, {
        ("ref", 42, None): s(base), ("ref", 43, None): s(base + 0.01),
        ("best", 42, None): s(base + 0.10), ("best", 43, None): s(base + 0.12),
        ("wild", 42, None): s(base + 0.25), ("wild", 43, None): s(base - 0.20),
    })
    assert list(summary.columns) == SUMMARY_COLUMNS
    assert list(summary.variant) == ["ref", "best", "wild"] and list(summary.replicates) == [2, 2, 2]
    assert set(summary.interval) == {"images+training"} and list(runs_df.fold) == [0] * 6
    row = summary.set_index("variant")
    assert row.significant["best"] and not row.significant["wild"]  # wild's seeds disagree: no evidence
    assert row.final_mean["best"] == pytest.approx(base.mean() + 0.11)
    verdict = summary.attrs["verdict"]
    assert verdict["winner"] is None and verdict["best"] == "best" and verdict["runner_up"] == "wild"
    assert "no variant is distinguishable" in summary_markdown(summary)

    logged = {}
    parent = NS(log_dataframe=lambda df, f: logged.setdefault(f, df), log_text=lambda t, f: logged.setdefault(f, t),
                log_figure=lambda fig, f: (logged.setdefault("figures", []).append(f), plots.plt.close(fig)),
                log_metrics=logged.update,
                set_tags=lambda t: logged.setdefault("tags", t))
    ablate._log_summary(parent, summary, runs_df, 1.0)
    assert logged["tags"] == {"segnet.best_variant": "none", "segnet.best_mean_variant": "best"}
    assert logged["best_final_mean"] == pytest.approx(base.mean() + 0.11) and logged["best_lead_lo"] < 0
    assert logged["figures"] == ["plots/ablation.png", "plots/bootstrap_ci.png", "plots/score_gaps.png"]

    # without the wild variant, best's lead survives: it is named; folds from the tag, one seed each
    summary, runs_df = _fake_ablation(monkeypatch, {
        ("ref", 42, 0): s(base).iloc[:100], ("ref", 42, 1): s(base).iloc[100:],
        ("best", 42, 0): s(base + 0.1).iloc[:100], ("best", 42, 1): s(base + 0.1).iloc[100:],
    })
    assert list(runs_df.fold) == [0, 1, 0, 1] and list(summary.replicates) == [2, 2]
    assert list(summary.interval) == ["images", "images"]  # one seed per fold: image sampling only
    assert summary.attrs["verdict"]["winner"] == "best" and summary.attrs["verdict"]["n_images"] == 200
    logged.clear()
    ablate._log_summary(parent, summary, runs_df, 1.0)
    assert logged["tags"]["segnet.best_variant"] == "best"
    assert "best variant: best, its lead over every other variant survives" in logged["summary.md"]

    # the charts say which interval it is: dotted and "images only", a * over the final bar
    fig = plots.plot_bootstrap_ci(summary, reference="ref")
    (ax,) = fig.axes
    assert [t.get_text() for t in ax.get_legend().get_texts()] == ["images only (1 replicate)"]
    assert ax.get_lines()[1].get_linestyle() == ":"  # best's interval segment
    assert [t.get_text() for t in ax.get_yticklabels()][1].endswith("p_best 1.00")
    fig2 = plots.plot_ablation(summary, reference="ref")
    assert [t.get_text() for t in fig2.axes[0].texts] == ["*"] and "one replicate" in fig2._suptitle.get_text()
    plots.plt.close(fig)
    plots.plt.close(fig2)


def test_small_ablation_end_to_end_restart_and_rest_review(tiny_synth, tmp_path):
    """`segnet ablate` and `segnet compare` as users run them (separate processes), then a rerun that
    trains nothing, then the review through a real MLflow server's REST API, as the UI sees it."""
    from mlflow import MlflowClient

    uri = store_uri(tmp_path)
    spec = {"seeds": 1, "bootstrap": 200,
            "overrides": [*tiny_overrides(tiny_synth, uri), "train.epochs=1", "tracking.log_model=false"],
            "variants": {"transposed_k3": {"model.decoder": "transposed", "decoder.kernel_size": 3},
                         "upsampling_nearest": {"model.decoder": "upsampling"}}}
    f = _write(tmp_path, spec)
    out = run(["ablate", "--config", str(f), "--jobs", "2"], tmp_path)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    parent_id = re.search(r"^ablation_run_id: ([0-9a-f]{32})", out.stdout, re.M).group(1)
    assert "[transposed_k3 s42] epoch   1/1" in out.stdout and "2/2 done, 0 running, 0 pending" in out.stdout
    client = MlflowClient(uri)
    summary = pd.read_csv(client.download_artifacts(parent_id, "summary.csv", str(tmp_path)))
    assert list(summary.variant) == ["transposed_k3", "upsampling_nearest"]
    assert list(summary.columns) == SUMMARY_COLUMNS
    assert summary.loc[1, "diff_lo"] <= summary.loc[1, "diff_mean"] <= summary.loc[1, "diff_hi"]
    assert list(summary.interval) == ["images", "images"] and list(summary.replicates) == [1, 1]

    # The same interval from `segnet compare` on the two children (any finished runs can be compared).
    from segnet.tracking import find_runs

    kids = {r.data.tags["segnet.variant"]: r.info.run_id
            for r in find_runs(uri, "test", f"tags.`segnet.ablation_id` = '{parent_id}'")}
    first_wall = client.get_run(parent_id).data.metrics["wall_time_s"]
    # `compare` and the rerun below (it only reads the children) as two processes at once.
    cmp, again = run_at_once([["compare", kids["transposed_k3"], kids["upsampling_nearest"], "--bootstrap", "200"],
                              ["ablate", "--config", str(f)]], tmp_path)
    assert cmp.returncode == 0, cmp.stderr[-3000:]
    r = summary.loc[1]
    assert (f"{kids['upsampling_nearest']}: final {r.final_mean:.4f}  diff {r.diff_mean:+.4f} "
            f"[{r.diff_lo:+.4f}, {r.diff_hi:+.4f}]{' *' if r.significant else ''}  p_best {r.p_best:.2f}  "
            f"lost fp/fn/s/m/l {r.gap_empty_fp_mean:.3f}/{r.gap_empty_fn_mean:.3f}/{r.gap_small_mean:.3f}/"
            f"{r.gap_medium_mean:.3f}/{r.gap_large_mean:.3f}") in cmp.stdout, cmp.stdout
    assert "covers image sampling only" in cmp.stdout

    # Rerunning the same ablation finds the parent by its hash and trains nothing again; its wall time
    # adds to the first invocation's instead of replacing it.
    assert again.returncode == 0, again.stderr[-3000:]
    assert f"ablation_run_id: {parent_id}" in again.stdout
    assert "2 finished children kept, 0 to train" in again.stdout
    assert client.get_run(parent_id).data.metrics["wall_time_s"] > first_wall

    # Review through a real MLflow server's REST API, as the UI sees it.
    with mlflow_server(uri) as base:
        exp = rest_get(base, "/api/2.0/mlflow/experiments/get-by-name", experiment_name="test")["experiment"]
        tags = {t["key"]: t["value"] for t in exp.get("tags", [])}
        assert tags["mlflow.experimentKind"] == "custom_model_development"
        found = rest_post(base, "/api/2.0/mlflow/runs/search", {
            "experiment_ids": [exp["experiment_id"]],
            "filter": f"tags.mlflow.parentRunId = '{parent_id}'"})["runs"]
        assert len(found) == 2
        for r in found:
            metrics = {m["key"] for m in r["data"]["metrics"]}
            assert {"best_val_tgs_map", "artifact_periodic_energy", "val_tgs_map"} <= metrics
            assert r["info"]["status"] == "FINISHED"
        arts = {a["path"] for a in rest_get(base, "/api/2.0/mlflow/artifacts/list", run_id=parent_id)["files"]}
        assert {"summary.csv", "summary.md", "plots"} <= arts
        csv = rest_get(base, "/get-artifact", path="summary.csv", run_uuid=parent_id)["raw"]
        assert "transposed_k3" in csv and "diff_lo" in csv
        parent = rest_get(base, "/api/2.0/mlflow/runs/get", run_id=parent_id)["run"]["data"]
        best = summary.loc[summary.final_mean.idxmax(), "variant"]
        ptags = {t["key"]: t["value"] for t in parent["tags"]}
        assert ptags["segnet.best_mean_variant"] == best
        # two variants: the best one's lead survives exactly when the difference's interval excludes 0
        assert ptags["segnet.best_variant"] == (best if summary.loc[1, "significant"] else "none")
        assert {m["key"] for m in parent["metrics"]} >= {"best_tgs_map_tuned_mean", "wall_time_s"}
        pinputs = rest_get(base, "/api/2.0/mlflow/runs/get", run_id=parent_id)["run"]["inputs"]["dataset_inputs"]
        assert [(d["dataset"]["name"], d["tags"][0]["value"]) for d in pinputs] == [("synthetic", "ablation")]
