"""Schedulers of one's own (Slurm arrays, Kubernetes Jobs): `segnet ablate|cv --plan` prints one shell
command per unfinished child; each is run here as a scheduler would, `bash -c LINE` in another folder and
environment; then `--summarize <id>` ends the parent from what finished, as `ablate` / `cv` would."""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import yaml
from mlflow import MlflowClient

from segnet import cv
from segnet.children import child_command, environment, shell_command
from segnet.cli import main as cli_main

from .procs import run, run_statuses, segnet_env, store_uri, tiny_overrides

VARIANTS = {"transposed_k3": {"model.decoder": "transposed", "decoder.kernel_size": 3},
            "upsampling_nearest": {"model.decoder": "upsampling"}}


def test_planned_command_is_self_contained(tmp_path, monkeypatch):
    """The child's `segnet train` command line, run by `python` with relative paths made absolute and the
    store (always) and the runs folder (when set) in front."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "my data").mkdir()
    (tmp_path / "p.yaml").write_text("train:\n  epochs: 1\n")
    monkeypatch.setenv("SEGNET_RUNS_DIR", "scratch")
    monkeypatch.delenv("TGS_DATA", raising=False)
    p = cv.plan("p.yaml", ["data.dir=my data", "data.n_folds=2"])
    argv = shlex.split(shell_command(p.children[1], p.profile, "P", cv.ID_TAG))
    local = child_command(p.children[1], p.profile, "P", id_tag=cv.ID_TAG)
    assert argv[:4] == ["python", "-m", "segnet", "train"] and len(argv) == len(local)
    assert argv[argv.index("--config") + 1] == str(tmp_path / "p.yaml")
    assert [a for a in argv[4:] if "data.dir" in a] == [f"data.dir={tmp_path / 'my data'}"]
    assert [a for a in argv[4:] if "data.dir" not in a and "p.yaml" not in a] == \
        [a for a in local[4:] if "data.dir" not in a and "p.yaml" not in a]
    assert {"segnet.cv_id=P", "segnet.fold=1", "data.fold=1"} <= set(argv) and argv[-1] == "train.resume=true"
    words = shlex.split(environment("sqlite:///m.db"))
    assert words == [f"MLFLOW_TRACKING_URI=sqlite:///{tmp_path / 'm.db'}", f"SEGNET_RUNS_DIR={tmp_path / 'scratch'}"]
    monkeypatch.delenv("SEGNET_RUNS_DIR")
    assert environment("http://host:5000") == "MLFLOW_TRACKING_URI=http://host:5000"


def _scheduled(line: str, tmp: Path) -> subprocess.Popen:
    """A planned line as a scheduler runs it: `bash -c LINE` from another folder, whose environment names
    another store and runs folder (the line's own must win) and puts the venv's `python` first."""
    elsewhere = tmp / "elsewhere"
    elsewhere.mkdir(exist_ok=True)
    env = segnet_env(tmp, MLFLOW_TRACKING_URI=store_uri(elsewhere), SEGNET_RUNS_DIR=str(elsewhere / "runs"),
                     PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}")
    return subprocess.Popen(["bash", "-c", line], cwd=elsewhere, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)


def _finish(proc: subprocess.Popen) -> None:
    out = proc.communicate(timeout=600)[0]
    assert proc.returncode == 0, out[-3000:]
    assert re.search(r"^run_id: [0-9a-f]{32}", out, re.M), out[-3000:]


def _ok(out: subprocess.CompletedProcess) -> subprocess.CompletedProcess:
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    return out


@pytest.fixture(scope="module")
def shared(tmp_path_factory) -> Path:
    """One tracking store and runs folder for the module's ablation and cv (the store is made once)."""
    return tmp_path_factory.mktemp("plan")


@pytest.fixture(scope="module")
def planned(tiny_synth, shared):
    """A 2-variant, 1-seed, one-epoch ablation through `--plan`: child 1 run, `--summarize` and `--plan`
    again, child 2 run, `--summarize`. Returns the folder, the ablation file, the parent id and each step."""
    tmp = shared
    f = tmp / "ablation.yaml"
    f.write_text(yaml.safe_dump({"seeds": 1, "bootstrap": 200, "variants": VARIANTS,
                                 "overrides": tiny_overrides(tiny_synth, epochs=1)}))
    steps = {"plan": _ok(run(["ablate", "--config", str(f), "--plan"], tmp))}
    parent = re.search(r"^ablation_run_id: ([0-9a-f]{32})", steps["plan"].stderr, re.M).group(1)
    steps["status_after_plan"] = run_statuses(tmp)[parent]
    _finish(_scheduled(steps["plan"].stdout.splitlines()[0], tmp))
    steps["partial"] = _ok(run(["ablate", "--summarize", parent], tmp))
    steps["replan"] = _ok(run(["ablate", "--config", str(f), "--plan"], tmp))
    _finish(_scheduled(steps["replan"].stdout.splitlines()[0], tmp))
    steps["summary"] = _ok(run(["ablate", "--summarize", parent], tmp))
    return tmp, f, parent, steps


def test_plan_prints_one_command_per_child(planned):
    tmp, _, parent, steps = planned
    lines = steps["plan"].stdout.splitlines()
    assert len(lines) == 2  # stdout: the commands alone
    for line, variant in zip(lines, VARIANTS, strict=True):
        assert line.startswith(f"MLFLOW_TRACKING_URI={store_uri(tmp)} SEGNET_RUNS_DIR={tmp / 'runs'} python -m "
                               f"segnet train --parent-run-id {parent} --tag segnet.ablation_id={parent} ")
        assert f"tracking.variant={variant} train.resume=true" in line
    assert "0 of 2 children finished; 2 command(s) on stdout" in steps["plan"].stderr
    assert f"python -m segnet ablate --summarize {parent}" in steps["plan"].stderr
    assert steps["status_after_plan"] == "RUNNING"  # created, let go: no lock, nothing trained
    assert not list((tmp / "runs" / parent).glob("*.keras"))


def test_summarize_names_the_missing_children(planned):
    _, _, parent, steps = planned
    partial = steps["partial"]
    assert partial.stderr.strip() == "ablate: 1 of 2 children not finished yet: upsampling_nearest s42"
    assert f"ablation_run_id: {parent}  (1 of 2 children finished; parent left RUNNING)" in partial.stdout
    assert "| transposed_k3 | 1 |" in partial.stdout and "upsampling_nearest |" not in partial.stdout


def test_plan_after_some_finished_lists_only_the_rest(planned):
    _, _, _, steps = planned
    assert steps["replan"].stdout.splitlines() == steps["plan"].stdout.splitlines()[1:]
    assert "1 of 2 children finished; 1 command(s) on stdout" in steps["replan"].stderr
    assert "continuing ablation" in steps["replan"].stderr  # found by the same config hash


def test_plan_then_summarize_is_a_complete_ablation(planned):
    """The summary is the one `segnet ablate` computes from the same children (same function, same runs)."""
    from segnet.ablate import plan, summarize

    tmp, f, parent, steps = planned
    assert f"ablation_run_id: {parent}  (2 of 2 children finished; parent FINISHED)" in steps["summary"].stdout
    assert steps["summary"].stderr == ""  # nobody missing
    client = MlflowClient(store_uri(tmp))
    info = client.get_run(parent)
    assert info.info.status == "FINISHED" and info.data.metrics["n_children"] == 2
    assert info.data.metrics["wall_time_s"] > 0 and "segnet.best_mean_variant" in info.data.tags
    kids = client.search_runs([info.info.experiment_id], f"tags.`segnet.ablation_id` = '{parent}'")
    assert sorted(r.data.tags["segnet.variant"] for r in kids) == sorted(VARIANTS)
    assert {(r.info.status, r.data.tags["mlflow.parentRunId"]) for r in kids} == {("FINISHED", parent)}
    got = pd.read_csv(client.download_artifacts(parent, "summary.csv", str(tmp)))
    assert list(got.variant) == list(VARIANTS) and list(got.replicates) == [1, 1]
    want = summarize(store_uri(tmp), plan(f), parent)[0]
    cols = ["variant", "replicates", "final_mean", "diff_mean", "diff_lo", "diff_hi", "p_best"]
    pd.testing.assert_frame_equal(got[cols], want[cols].reset_index(drop=True), check_dtype=False)
    assert {"summary.md", "children.csv", "plots"} <= {a.path for a in client.list_artifacts(parent)}


def test_summarize_refuses_what_is_not_a_parent(planned, monkeypatch, capsys):
    tmp, _, parent, _ = planned
    monkeypatch.setenv("MLFLOW_TRACKING_URI", store_uri(tmp))
    child = next(r for r, s in run_statuses(tmp).items() if r != parent and s == "FINISHED")
    for argv, what in [(["ablate", "--summarize", child], "not an ablation parent run"),
                       (["cv", "--summarize", parent], "not a cv parent run (its tag segnet.role is ablation)")]:
        assert cli_main(argv) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and what in err[0], err


def test_cv_plan_and_summarize(tiny_synth, shared, monkeypatch, capsys):
    """`cv --plan`: one command per fold; `--summarize` refuses while no fold finished, then ends the cv as
    `segnet cv` does. The folds run at once, as an array's tasks would."""
    over = [*tiny_overrides(tiny_synth, epochs=1), "data.n_folds=2"]
    out = _ok(run(["cv", "--plan", *over], shared))
    parent = re.search(r"^cv_run_id: ([0-9a-f]{32})", out.stderr, re.M).group(1)
    lines = out.stdout.splitlines()
    assert len(lines) == 2 and all(f"segnet.cv_id={parent}" in line for line in lines)
    assert [re.search(r"data\.fold=(\d)", line).group(1) for line in lines] == ["0", "1"]
    procs = [_scheduled(line, shared) for line in lines]
    monkeypatch.setenv("MLFLOW_TRACKING_URI", store_uri(shared))
    assert cli_main(["cv", "--summarize", parent]) == 2  # in process, while the folds start
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].endswith("none of its 2 children has finished yet (fold 0, fold 1); "
                                             "nothing to summarize"), err
    for proc in procs:
        _finish(proc)
    done = _ok(run(["cv", "--summarize", parent], shared))
    assert f"cv_run_id: {parent}  (2 of 2 folds finished; parent FINISHED)" in done.stdout
    client = MlflowClient(store_uri(shared))
    info = client.get_run(parent)
    assert info.info.status == "FINISHED" and {"oof_tgs_map", "oof_threshold", "wall_time_s"} <= set(info.data.metrics)
    scores = pd.read_csv(client.download_artifacts(parent, "oof/scores.csv", str(shared)), dtype={"id": str})
    assert len(scores) == 40 and scores.id.is_unique and sorted(set(scores.fold)) == [0, 1]
    assert len(info.data.tags["segnet.cv_folds"].split(",")) == 2
