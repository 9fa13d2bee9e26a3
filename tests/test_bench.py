"""The benchmark: a row per decoder plus the baseline, positive numbers, ratios, MLflow logging.

The default test is a smoke run on tiny models (filters 4, depth 2, batch 4; baseline 32x32) so the
harness is exercised in well under a minute per model; ``bench(quick=True)`` at the real defaults
(several minutes on 2 CPU cores) is the slow test.
"""

from __future__ import annotations

import json
import math

import pandas as pd
import pytest

TINY_OVERRIDES = ["model.filters=4", "model.depth=2", "train.batch_size=4"]


@pytest.fixture
def store(tmp_path, monkeypatch):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    monkeypatch.setenv("TF_CPP_MIN_LOG_LEVEL", "2")
    return uri


def _check(out_csv, summary, names, uri):
    from segnet.bench import BASELINE, EXPERIMENT

    df = pd.read_csv(out_csv)
    assert sorted(df["model"]) == sorted([*names, BASELINE])
    for col in ("train_images_per_s", "train_images_per_s_best", "infer_images_per_s", "params",
                "fwd_gflops_per_image", "train_gflops_per_s", "train_pct_conv_peak", "rss_growth_mb"):
        assert (df[col] > 0).all() if col != "rss_growth_mb" else (df[col] >= 0).all(), col
    for col in ("train_x_baseline", "infer_x_baseline"):
        assert df[col].map(math.isfinite).all() and (df[col] > 0).all(), col
    base = df.set_index("model").loc[BASELINE]
    assert base["train_x_baseline"] == pytest.approx(1.0) and base["infer_x_baseline"] == pytest.approx(1.0)
    assert (df["train_images_per_s_best"] >= df["train_images_per_s"] - 1e-9).all()
    m = summary["machine"]
    assert m["matmul_gflops"] > 0 and m["conv_gflops"] > 0
    f = summary["findings"]
    assert f["pipeline_images_per_s"] > 0
    if "maxunpool" in names and "transposed" in names:
        assert f["unpool_over_transposed_train"] > 0
    assert f["default_train_x_baseline"] == pytest.approx(df.set_index("model").loc["transposed", "train_x_baseline"])
    js = json.loads(out_csv.with_suffix(".json").read_text())
    assert js["run_id"] == summary["run_id"] and len(js["rows"]) == len(df)

    from mlflow.tracking import MlflowClient

    c = MlflowClient(tracking_uri=uri)
    exp = c.get_experiment_by_name(EXPERIMENT)
    run = c.get_run(summary["run_id"])
    assert run.info.experiment_id == exp.experiment_id and run.info.status == "FINISHED"
    assert run.data.metrics["transposed.train_images_per_s"] > 0
    assert run.data.metrics[f"{BASELINE}.train_x_baseline"] == pytest.approx(1.0)
    arts = {a.path for a in c.list_artifacts(run.info.run_id)}
    assert {out_csv.name, out_csv.with_suffix(".json").name, "plots"} <= arts


def test_flop_count_matches_hand_count():
    import keras

    from segnet.bench import forward_flops

    inp = keras.Input((8, 8, 3))
    x = keras.layers.Conv2D(5, 3, padding="same", use_bias=False)(inp)  # 8*8*5*3*3*3 MACs
    x = keras.layers.Conv2DTranspose(2, 3, strides=2, padding="same")(x)  # 8*8*5 * 3*3*2 MACs
    x = keras.layers.Flatten()(x)
    x = keras.layers.Dense(7)(x)  # 16*16*2*7 MACs
    model = keras.Model(inp, x)
    macs = 8 * 8 * 5 * 27 + 8 * 8 * 5 * 18 + 16 * 16 * 2 * 7
    assert forward_flops(model, (8, 8, 3)) == pytest.approx(2 * macs)


def test_round_order_interleaves():
    from segnet.bench import round_order

    names = ["a", "b", "c"]
    orders = [round_order(names, r) for r in range(2 * len(names))]
    assert all(sorted(o) == names for o in orders)
    assert all(a != b for a, b in zip(orders, orders[1:], strict=False))
    mean_pos = {n: sum(o.index(n) for o in orders) / len(orders) for n in names}
    assert set(mean_pos.values()) == {1.0}  # every model in every position equally often


def test_summary_line_names_only_the_ratios_that_were_measured():
    from segnet.bench import summary_line

    machine = {"matmul_gflops": 480.0, "conv_gflops": 490.0}
    levers = {"pipeline_images_per_s": 7000.0, "unpool_over_transposed_train": float("nan"),
              "default_model": "transposed", "default_train_x_baseline": 1.9,
              "default_infer_x_baseline": 1.59, "default_train_pct_conv_peak": 66.4}
    line = summary_line(machine, levers)
    assert "nan" not in line and "maxunpool" not in line  # --levers runs no maxunpool
    assert "transposed x baseline: train 1.90, infer 1.59, 66% of conv peak" in line
    full = summary_line(machine, {**levers, "unpool_over_transposed_train": 1.06})
    assert full.endswith("maxunpool/transposed train time 1.06x")


def _bench_smoke(tmp_path, store, names):
    """Tiny models, ``names`` (None: every registered decoder) + the baseline, the whole harness and the MLflow run."""
    from segnet.bench import Settings, bench
    from segnet.models.decoders import DECODERS

    tiny = Settings(rounds=2, warmup=0, train_steps=1, step_steps=1, infer_steps=1, n_images=16,
                    pipeline_batches=1, peak_repeats=1, memory="inprocess", baseline_size=32, baseline_filters=4)
    out = tmp_path / "res.csv"
    summary = bench(quick=True, out=out, names=names, settings=tiny, overrides=TINY_OVERRIDES, log=lambda s: None)
    _check(out, summary, names or list(DECODERS), store)
    return out


def test_bench_smoke_default_and_maxunpool(tmp_path, store):
    """The two models every finding needs (the default decoder and maxunpool) through the whole harness."""
    out = _bench_smoke(tmp_path, store, ["transposed", "maxunpool"])
    assert (pd.read_csv(out)["step_images_per_s"] > 0).all()


@pytest.mark.slow
def test_bench_smoke_every_decoder(tmp_path, store):
    assert (pd.read_csv(_bench_smoke(tmp_path, store, None))["step_images_per_s"] > 0).all()


@pytest.mark.slow
def test_bench_quick_defaults(tmp_path, store):
    """``bench(quick=True)`` exactly as ``segnet bench --quick`` runs it (several minutes on 2 cores)."""
    from segnet.bench import bench
    from segnet.models.decoders import DECODERS

    out = tmp_path / "quick.csv"
    summary = bench(quick=True, out=out)
    _check(out, summary, list(DECODERS), store)


def test_lever_models_swap_only_what_they_name():
    """The lever rows: Keras' own BatchNormalization (and 128 resize for the first), nothing else changed;
    the default model keeps the fused layer afterwards."""
    import keras

    from segnet.bench import build_segnet, default_config
    from segnet.models.layers import FusedBatchNormalization

    cfg = default_config().replace(TINY_OVERRIDES)

    def bn_types(model):
        return {type(layer) for layer in model.layers if isinstance(layer, keras.layers.BatchNormalization)}

    c128, m128, _ = build_segnet("keras_bn_resize128", cfg)
    c112, m112, _ = build_segnet("keras_bn_pad112", cfg)
    cdef, mdef, _ = build_segnet("transposed", cfg)
    assert (c128.data.size, c128.data.resize_mode, c112.data.size, c112.data.resize_mode) == (128, "resize", 112, "pad")
    assert bn_types(m128) == bn_types(m112) == {keras.layers.BatchNormalization}
    assert bn_types(mdef) == {FusedBatchNormalization}
    assert c112.model == cdef.model and m112.count_params() == mdef.count_params()


@pytest.mark.slow  # 40 s of model building; the levers' model swap itself is checked above
def test_bench_levers_rows(tmp_path, store):
    from segnet.bench import BASELINE, Settings, bench

    tiny = Settings(rounds=1, warmup=0, train_steps=1, step_steps=0, infer_steps=1, n_images=8,
                    pipeline_batches=1, peak_repeats=1, memory="inprocess", baseline_size=32, baseline_filters=4)
    out = tmp_path / "levers.csv"
    summary = bench(quick=True, out=out, levers=True, settings=tiny, overrides=TINY_OVERRIDES, log=lambda s: None)
    df = pd.read_csv(out).set_index("model")
    assert list(df.index) == ["keras_bn_resize128", "keras_bn_pad112", "transposed", BASELINE]
    assert list(df.input_size) == [128, 112, 112, 32] and (df.train_x_baseline > 0).all()
    assert summary["settings"]["levers"] is True
