"""MLflow-native review (issue 17), through the REST API of a real `mlflow server`, as the UI reads it:
dataset inputs (lineage) of training and evaluation, the model registry (`segnet register`, `--model
models:/<name>@<alias>` for predict and evaluate, an ablation registering its best) and system metrics.

One training run (a module fixture) serves every test; the segnet commands run as separate processes.
"""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path

import pytest

from tests.procs import (
    mlflow_server,
    ok,
    one_error,
    rest_get,
    rest_post,
    run,
    run_at_once,
    segnet_env,
    tiny_overrides,
)

MODEL = "segnet-test"


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """A real MLflow server on a free loopback port (sqlite store, artifacts proxied to a temp folder)."""
    tmp = tmp_path_factory.mktemp("mlflow_server")
    with mlflow_server(f"sqlite:///{tmp / 'mlflow.db'}", "--artifacts-destination", str(tmp / "artifacts"),
                       "--workers", "1", cwd=tmp) as base:
        yield base


@pytest.fixture(scope="module")
def work(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("mlflow_review")


def _env(work: Path, base: str, **extra) -> dict:
    return segnet_env(work, MLFLOW_TRACKING_URI=base, MLFLOW_SYSTEM_METRICS_SAMPLING_INTERVAL="1", **extra)


def _segnet(args: list[str], work: Path, base: str, timeout: float = 600) -> subprocess.CompletedProcess:
    return run(args, work, env=_env(work, base), timeout=timeout)


@pytest.fixture(scope="module")
def trained(server, work, tiny_synth) -> dict:
    """The one training run of the module, with a logged model; returns its REST ``run`` object."""
    out = ok(_segnet(["train", *tiny_overrides(tiny_synth), "tracking.log_model=true"], work, server))
    run_id = re.search(r"run_id: (\w+)", out).group(1)
    return rest_get(server, "/api/2.0/mlflow/runs/get", run_id=run_id)["run"]


@pytest.fixture(scope="module")
def registered(server, work, trained) -> dict:
    """`segnet register` of the training run, twice (the second keeps the version); the alias's version."""
    run_id = trained["info"]["run_id"]
    out = ok(_segnet(["register", "--run-id", run_id, "--name", MODEL, "--alias", "champion"], work, server))
    assert f"models:/{MODEL}@champion" in out
    ok(_segnet(["register", "--run-id", run_id, "--name", MODEL], work, server))
    return rest_get(server, "/api/2.0/mlflow/registered-models/alias", name=MODEL, alias="champion")["model_version"]


def _tags(entity: dict) -> dict:
    return {t["key"]: t["value"] for t in entity.get("tags", [])}


def _inputs(run: dict) -> dict[str, dict]:
    """context -> {name, digest, source (uri), profile, schema columns} of a REST run's dataset inputs."""
    out = {}
    for di in run.get("inputs", {}).get("dataset_inputs", []):
        ds = di["dataset"]
        out[_tags(di)["mlflow.data.context"]] = {
            "name": ds["name"], "digest": ds["digest"], "source_type": ds["source_type"],
            "source": json.loads(ds["source"])["uri"], "profile": json.loads(ds["profile"]),
            "columns": [c["name"] for c in json.loads(ds["schema"])["mlflow_colspec"]]}
    return out


def test_training_run_has_its_dataset_inputs(server, trained, tiny_synth):
    tags = {t["key"]: t["value"] for t in trained["data"]["tags"]}
    inputs = _inputs(trained)
    assert set(inputs) == {"training", "validation"}
    for ds in inputs.values():
        assert ds["digest"] == tags["segnet.data_fingerprint"]
        assert ds["source"] == str(tiny_synth.resolve()) and ds["source_type"] == "local"
        assert ds["columns"] == ["id", "coverage", "fold"]
    assert inputs["training"]["name"] == "synthetic"
    assert inputs["training"]["profile"]["num_rows"] == 40  # data.limit=40 of the 48 images
    assert inputs["validation"]["name"] == "synthetic/fold-0-of-4"
    assert inputs["validation"]["profile"]["num_rows"] == 10 and inputs["validation"]["profile"]["fold"] == 0
    # runs can be filtered by dataset, as the UI's search box does
    found = rest_post(server, "/api/2.0/mlflow/runs/search", {
        "experiment_ids": [trained["info"]["experiment_id"]],
        "filter": f"dataset.name = 'synthetic' AND dataset.digest = '{tags['segnet.data_fingerprint']}' "
                  "AND dataset.context = 'training'"}).get("runs", [])
    assert [r["info"]["run_id"] for r in found] == [trained["info"]["run_id"]]


def test_a_parent_shows_the_datasets_its_children_trained_on(server, trained):
    """An ablation's or a cv's parent takes its children's training datasets as its own inputs (what
    ``ablate`` and ``cv`` call when they conclude), read back through the REST API as the UI does."""
    from segnet import tracking

    parent = tracking.create_run(server, "test", "ablation-inputs", {"segnet.role": "ablation"})
    run_id = trained["info"]["run_id"]
    assert tracking.log_children_inputs(parent, [run_id, run_id], "ablation") == 1  # one dataset, once
    parent.end()
    got = _inputs(rest_get(server, "/api/2.0/mlflow/runs/get", run_id=parent.run_id)["run"])
    assert got == {"ablation": _inputs(trained)["training"]}


def test_training_run_has_system_metrics(server, trained):
    run_id = trained["info"]["run_id"]
    keys = {m["key"] for m in rest_get(server, "/api/2.0/mlflow/runs/get", run_id=run_id)["run"]["data"]["metrics"]}
    assert {"system/cpu_utilization_percentage", "system/system_memory_usage_megabytes",
            "system/system_memory_usage_percentage"} <= keys, sorted(keys)
    hist = rest_get(server, "/api/2.0/mlflow/metrics/get-history", run_id=run_id,
                metric_key="system/system_memory_usage_megabytes")["metrics"]
    assert len(hist) >= 2 and all(m["value"] > 0 for m in hist)  # sampled every second while it trained
    assert sorted(m["step"] for m in hist) == list(range(len(hist)))


def test_register_gives_a_version_with_alias_and_tags(server, trained, registered):
    run_id = trained["info"]["run_id"]
    run_tags = _tags(trained["data"])
    assert registered["run_id"] == run_id and registered["version"] == "1"  # registered twice, one version
    assert registered["source"].startswith("models:/m-")  # the run's logged (pyfunc) model
    vtags = _tags(registered)
    assert vtags["segnet.data_fingerprint"] == run_tags["segnet.data_fingerprint"]
    assert vtags["segnet.variant"] == run_tags["segnet.variant"]
    metrics = {m["key"]: m["value"] for m in trained["data"]["metrics"]}
    assert float(vtags["segnet.val_tgs_map_tuned"]) == pytest.approx(metrics["val_tgs_map_tuned"], abs=1e-4)
    model = rest_get(server, "/api/2.0/mlflow/registered-models/get", name=MODEL)["registered_model"]
    assert {a["alias"]: a["version"] for a in model["aliases"]} == {"champion": "1"}
    # the logged model's page lists the version it was registered as, once
    logged = rest_get(server, f"/api/2.0/mlflow/logged-models/{registered['source'].removeprefix('models:/')}")
    links = json.loads(_tags(logged["model"]["info"])["mlflow.modelVersions"])
    assert [(d["name"], str(d["version"])) for d in links] == [(MODEL, "1")], links
    assert logged["model"]["info"]["source_run_id"] == run_id


def test_predict_by_model_alias_writes_the_same_submission(server, work, trained, registered, tiny_synth):
    images = str(tiny_synth / "test" / "images")
    by_run, by_model = work / "by_run.csv", work / "by_model.csv"
    ran = run_at_once([  # two processes at once
        ["predict", "--run-id", trained["info"]["run_id"], "--images", images, "--out", str(by_run)],
        ["predict", "--model", f"models:/{MODEL}@champion", "--images", images, "--out", str(by_model)]],
        work, env=_env(work, server))
    ok(ran[0])
    out = ok(ran[1])
    assert f"is run {trained['info']['run_id']}" in out
    assert by_model.read_text() == by_run.read_text() and len(by_run.read_text().splitlines()) == 5


def test_evaluate_by_model_on_another_folder_logs_that_folder(server, work, trained, registered):
    from segnet.data.synthetic import generate

    other = generate(work / "other" / "synthetic", n=24, seed=7, progress=False)
    ok(_segnet(["evaluate", "--model", f"models:/{MODEL}@champion", f"data.dir={other}"], work, server))
    run = rest_get(server, "/api/2.0/mlflow/runs/get", run_id=trained["info"]["run_id"])["run"]
    inputs = _inputs(run)
    assert set(inputs) == {"training", "validation", "evaluation"}
    ev = inputs["evaluation"]
    assert ev["source"] == str(other.resolve()) and ev["name"] == "synthetic"
    assert ev["digest"] == _tags(run["data"])["segnet.eval_data_fingerprint"] != inputs["training"]["digest"]
    assert ev["profile"]["num_rows"] == 24


def test_register_and_model_errors_are_one_line(server, work, trained, registered):
    exp_id = trained["info"]["experiment_id"]
    bare = rest_post(server, "/api/2.0/mlflow/runs/create", {"experiment_id": exp_id})["run"]["info"]["run_id"]
    images = str(work)
    cases = [(["register", "--run-id", bare, "--name", MODEL], "no logged model"),
             (["register", "--run-id", "0" * 32], "not found"),
             (["predict", "--model", f"models:/{MODEL}@nope", "--images", images], "no alias 'nope'"),
             (["evaluate", "--model", "models:/nope@champion"], "no registered model 'nope'"),
             (["predict", "--images", images], "exactly one of")]
    outs = run_at_once([argv for argv, _ in cases], work, env=_env(work, server))  # each its own process, at once
    for (argv, says), out in zip(cases, outs, strict=True):
        assert says in one_error(out), argv


def test_ablation_registers_its_best_variants_best_seed(server, trained, monkeypatch, tmp_path):
    """In process: what ``_log_summary`` does with ``tracking.register`` set, on the finished run."""
    import pandas as pd

    from segnet import ablate, tracking
    from segnet.errors import ConfigError

    monkeypatch.setenv("MLFLOW_TRACKING_URI", server)
    run_id = trained["info"]["run_id"]
    parent = tracking.create_run(server, "test", "ablation-registry", {"segnet.role": "ablation"})
    runs_df = pd.DataFrame([{"variant": "a", "seed": 42, "run_id": "f" * 32, "tgs_map_tuned": 0.1},
                            {"variant": "b", "seed": 42, "run_id": run_id, "tgs_map_tuned": 0.5},
                            {"variant": "b", "seed": 43, "run_id": "e" * 32, "tgs_map_tuned": 0.2}])
    best = pd.Series({"variant": "b", "tgs_map_tuned_mean": 0.35, "tgs_map_mean": 0.3})
    mv = ablate._register_best(parent, best, runs_df, "segnet-ablation-test")
    parent.end()
    got = rest_get(server, "/api/2.0/mlflow/registered-models/alias", name="segnet-ablation-test",
               alias="champion")["model_version"]
    assert got["run_id"] == run_id and got["version"] == str(mv.version)
    vtags = _tags(got)
    assert vtags["segnet.ablation_id"] == parent.run_id and vtags["segnet.ablation_tgs_map_tuned_mean"] == "0.3500"
    assert vtags["segnet.data_fingerprint"] == _tags(trained["data"])["segnet.data_fingerprint"]
    ptags = _tags(rest_get(server, "/api/2.0/mlflow/runs/get", run_id=parent.run_id)["run"]["data"])
    assert ptags["segnet.registered_model"] == f"segnet-ablation-test/{mv.version}"

    # tracking.register without a logged model is refused before any training
    spec = tmp_path / "ablation.yaml"
    spec.write_text("variants:\n  t: {model.decoder: transposed}\n")
    with pytest.raises(ConfigError, match="tracking.log_model"):
        ablate.ablate(spec, ["tracking.register=x", "tracking.log_model=false"])
