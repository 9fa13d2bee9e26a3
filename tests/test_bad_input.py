"""Bad input through the real CLI: one line on stderr, exit code 2, no traceback, nothing half-written.

Each case runs ``python -m segnet <argv>`` as a separate process in its own ``tmp_path`` (the tracking
store and the runs folder there too). To add a case, append a :class:`Case` to ``CASES``:

* ``setup(ctx)`` builds the bad input under ``ctx.tmp`` (``ctx.dataset()`` copies a tiny valid dataset
  there to corrupt) and may return a dict of names for the placeholders;
* ``argv`` and ``expect`` may hold placeholders: ``{tmp}`` (the case's folder) and any name ``setup``
  returned (e.g. ``{id}``);
* ``expect``: words the one error line must contain; ``absent``: paths (relative to ``{tmp}``) that must
  not exist afterwards; ``env``: extra environment variables; ``unprivileged``: file permissions must
  bind (as root, the command runs without the capabilities that override them);
* ``setup`` may append to ``ctx.cleanups`` (e.g. stop a server it started): run after the command;
* stderr is checked strictly, also for a case that fails after TensorFlow is imported: the CLI hides
  TensorFlow's start-up lines (``segnet.tfnoise``), so any other line is a failure.
"""

from __future__ import annotations

import functools
import os
import shutil
import sqlite3
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image


@dataclass
class Ctx:
    """What a setup function gets: the case's folder and a tiny valid dataset to copy."""

    tmp: Path
    source: Path
    cleanups: list[Callable[[], object]] = field(default_factory=list)  # run after the command, in order

    def dataset(self, name: str = "ds") -> Path:
        """A fresh copy of the valid 8-image dataset at ``tmp/name``."""
        return Path(shutil.copytree(self.source, self.tmp / name))


@dataclass(frozen=True)
class Case:
    id: str
    argv: list[str]
    expect: list[str]
    setup: Callable[[Ctx], dict | None] | None = None
    absent: list[str] = field(default_factory=list)
    env: dict[str, str] = field(default_factory=dict)
    timeout: float = 180.0
    skip: str | None = None
    # File permissions must bind: run as root, the command runs without the capabilities that let root
    # ignore them (``_UNPRIVILEGED``), so a read-only file or folder is read-only for it too.
    unprivileged: bool = False
    # The error can only come after the MLflow run was opened (it must end FAILED); otherwise no run at all.
    opens_run: bool = False


# --------------------------------------------------------------------------------------------------
# Setup helpers
# --------------------------------------------------------------------------------------------------


def _ids(root: Path) -> list[str]:
    return pd.read_csv(root / "train.csv", dtype=str, keep_default_na=False)["id"].tolist()


def _salt_id(root: Path) -> str:
    df = pd.read_csv(root / "train.csv", dtype=str, keep_default_na=False)
    return df[df["rle_mask"] != ""]["id"].iloc[0]


def _set_cell(csv: Path, id_: str, column: str, value: str) -> None:
    df = pd.read_csv(csv, dtype=str, keep_default_na=False)
    df.loc[df["id"] == id_, column] = value
    df.to_csv(csv, index=False)


def _add_row(csv: Path, **row: str) -> None:
    df = pd.read_csv(csv, dtype=str, keep_default_na=False)
    pd.concat([df, pd.DataFrame({k: [v] for k, v in row.items()})]).to_csv(csv, index=False)


def corrupt_store(ctx: Ctx) -> None:
    (ctx.tmp / "mlflow.db").write_bytes(b"this is not a database, it was overwritten\n" * 20)


def store_folder(ctx: Ctx) -> None:
    (ctx.tmp / "store").mkdir()


def closed_port(ctx: Ctx) -> dict:
    import socket

    with socket.socket() as s:  # a port nobody listens on: bound, then released
        s.bind(("127.0.0.1", 0))
        return {"port": str(s.getsockname()[1])}


def not_an_mlflow_server(ctx: Ctx) -> dict:
    """Another web service where the tracking server should be (a wrong port): it answers, but not MLflow."""
    import socket
    import time

    ctx.dataset()
    port = closed_port(ctx)["port"]
    web = subprocess.Popen([sys.executable, "-m", "http.server", port, "--bind", "127.0.0.1"], cwd=ctx.tmp,
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    ctx.cleanups.append(lambda: (web.kill(), web.wait()))
    deadline = time.monotonic() + 60
    while True:
        try:
            socket.create_connection(("127.0.0.1", int(port)), timeout=1).close()
            return {"port": port}
        except OSError:
            assert web.poll() is None and time.monotonic() < deadline, "http.server did not start"
            time.sleep(0.1)


def dataset_and_closed_port(ctx: Ctx) -> dict:
    ctx.dataset()
    return closed_port(ctx)


def dataset_and_corrupt_store(ctx: Ctx) -> None:
    ctx.dataset()
    corrupt_store(ctx)


def dataset_and_read_only_store(ctx: Ctx) -> None:
    import sqlite3

    ctx.dataset()
    db = ctx.tmp / "mlflow.db"
    sqlite3.connect(db).close()
    db.chmod(0o444)


def dataset_only(ctx: Ctx) -> None:
    ctx.dataset()


def mlflow_store(ctx: Ctx) -> None:
    """A store MLflow made (its tables, an experiment 'old'), without runs."""
    db = ctx.tmp / "mlflow.db"
    code = "import sys, mlflow; mlflow.MlflowClient(sys.argv[1]).create_experiment('old')"
    subprocess.run([sys.executable, "-c", code, f"sqlite:///{db}"], check=True, capture_output=True, timeout=120)
    assert db.read_bytes()[:16] == b"SQLite format 3\x00"


def dataset_and_read_only_mlflow_store(ctx: Ctx) -> None:
    """A store MLflow made, then made read-only: a user's old store."""
    ctx.dataset()
    mlflow_store(ctx)
    (ctx.tmp / "mlflow.db").chmod(0o444)


def dataset_and_a_file(ctx: Ctx) -> None:
    ctx.dataset()
    (ctx.tmp / "afile").write_text("a file where a folder should be")


def config_folder(ctx: Ctx) -> None:
    (ctx.tmp / "profile").mkdir()


def config_broken_yaml(ctx: Ctx) -> None:
    (ctx.tmp / "broken.yaml").write_text("train: [epochs\n")


def ablation_file(text: str | bytes) -> Callable[[Ctx], None]:
    """``{tmp}/ablation.yaml`` with ``text`` (bytes: written as they are)."""
    def setup(ctx: Ctx) -> None:
        f = ctx.tmp / "ablation.yaml"
        f.write_bytes(text) if isinstance(text, bytes) else f.write_text(text)

    return setup


def dataset_and_read_only_folder(ctx: Ctx) -> None:
    ctx.dataset()
    (ctx.tmp / "ro").mkdir()
    (ctx.tmp / "ro").chmod(0o555)


def depth(value: str) -> Callable[[Ctx], dict]:
    def setup(ctx: Ctx) -> dict:
        d = ctx.dataset()
        i = _ids(d)[2]
        _set_cell(d / "depths.csv", i, "z", value)
        return {"id": i}

    setup.__name__ = f"depth_{value or 'empty'}"
    return setup


def zero_images(ctx: Ctx) -> None:
    d = ctx.dataset()
    (d / "train.csv").write_text("id,rle_mask\n")
    for sub in ("train/images", "train/masks"):
        shutil.rmtree(d / sub)
        (d / sub).mkdir()


def a_file_where_a_folder_goes(ctx: Ctx) -> None:
    (ctx.tmp / "afile").write_text("not a folder")


def read_only_folder(ctx: Ctx) -> None:
    (ctx.tmp / "ro").mkdir()
    (ctx.tmp / "ro").chmod(0o555)


def csv_ids_differ_by_whitespace(ctx: Ctx) -> dict:
    d = ctx.dataset()
    i = _ids(d)[1]
    _add_row(d / "train.csv", id=i + " ", rle_mask="")
    return {"id": i}


def files_differ_by_whitespace(ctx: Ctx) -> dict:
    d = ctx.dataset()
    i = _ids(d)[1]
    shutil.copy(d / "train/images" / f"{i}.png", d / "train/images" / f"{i} .png")
    return {"id": i}


def id_without_image(ctx: Ctx) -> dict:
    d = ctx.dataset()
    i = _ids(d)[3]
    (d / "train/images" / f"{i}.png").unlink()
    return {"id": i}


def image_without_row(ctx: Ctx) -> dict:
    d = ctx.dataset()
    i = _ids(d)[0]
    shutil.copy(d / "train/images" / f"{i}.png", d / "train/images/ffffffffff.png")
    shutil.copy(d / "train/masks" / f"{i}.png", d / "train/masks/ffffffffff.png")
    return {"id": "ffffffffff"}


def wrong_size_image(ctx: Ctx) -> dict:
    d = ctx.dataset()
    i = _ids(d)[4]
    Image.fromarray(np.zeros((64, 101), np.uint8)).save(d / "train/images" / f"{i}.png")
    return {"id": i}


def corrupt_png(ctx: Ctx) -> dict:
    d = ctx.dataset()
    i = _ids(d)[5]
    p = d / "train/images" / f"{i}.png"
    p.write_bytes(p.read_bytes()[:150])  # truncated mid-IDAT: OpenCV warns, PIL fails
    return {"id": i}


def malformed_rle(rle: str) -> Callable[[Ctx], dict]:
    def setup(ctx: Ctx) -> dict:
        d = ctx.dataset()
        i = _salt_id(d)
        _set_cell(d / "train.csv", i, "rle_mask", rle)
        return {"id": i}

    return setup


# --------------------------------------------------------------------------------------------------
# The table
# --------------------------------------------------------------------------------------------------

_ROOT = hasattr(os, "geteuid") and os.geteuid() == 0
# Root without the capabilities that override file permissions (util-linux's setpriv, dropped from the
# bounding set before exec): still uid 0, the owner of everything the test makes, but a 0o444 file or a
# 0o555 folder refuses it as it would refuse any user.
_UNPRIVILEGED = ["setpriv", "--bounding-set", "-dac_override,-dac_read_search,-fowner", "--"]
_TRAIN = ["train", "train.epochs=1"]

CASES = [
    # -- configuration (fails before TensorFlow is imported) --
    Case("config_is_a_folder", ["train", "--config", "{tmp}/profile"], ["{tmp}/profile", "folder"],
         setup=config_folder),
    Case("config_missing", ["train", "--config", "{tmp}/nope.yaml"], ["{tmp}/nope.yaml", "not found"]),
    Case("config_broken_yaml", ["train", "--config", "{tmp}/broken.yaml"], ["broken.yaml", "not valid YAML"],
         setup=config_broken_yaml),
    Case("lr_nan", [*_TRAIN, "train.lr=.nan"], ["'train.lr'", "finite"]),
    Case("lr_nan_string", [*_TRAIN, "train.lr=nan"], ["'train.lr'", "finite"]),
    Case("min_lr_minus_inf", [*_TRAIN, "train.min_lr=-.inf"], ["'train.min_lr'", "finite"]),
    Case("min_lr_above_lr", [*_TRAIN, "train.lr=0.001", "train.min_lr=0.01"], ["train.min_lr", "train.lr"]),
    Case("bad_config_key", ["train", "train.epoch=3"], ["unknown config key 'train.epoch'"]),
    Case("malformed_override", ["train", "foo"], ["override 'foo'", "key=value"]),
    Case("negative_seed", [*_TRAIN, "train.seed=-1"], ["'train.seed'"]),
    # The decoder registry lives in segnet.models, whose import loads Keras.
    Case("unknown_decoder", ["train", "model.decoder=nope"], ["model.decoder", "'nope'", "transposed"]),
    # -- datasets: `data check` --
    Case("depth_inf", ["data", "check", "{tmp}/ds"], ["{tmp}/ds/depths.csv", "{id}", "non-finite"],
         setup=depth("inf")),
    Case("depth_nan", ["data", "check", "{tmp}/ds"], ["{tmp}/ds/depths.csv", "{id}", "non-finite"],
         setup=depth("nan")),
    Case("depth_empty", ["data", "check", "{tmp}/ds"], ["{tmp}/ds/depths.csv", "{id}", "empty depth"],
         setup=depth("")),
    Case("zero_images_check", ["data", "check", "{tmp}/ds"], ["{tmp}/ds/train.csv", "no training images"],
         setup=zero_images),
    Case("csv_ids_differ_by_whitespace", ["data", "check", "{tmp}/ds"], ["train.csv", "'{id}'", "'{id} '"],
         setup=csv_ids_differ_by_whitespace),
    Case("files_differ_by_whitespace", ["data", "check", "{tmp}/ds"], ["'{id}.png'", "'{id} .png'"],
         setup=files_differ_by_whitespace),
    Case("id_without_image", ["data", "check", "{tmp}/ds"], ["train.csv id {id}", "no image file"],
         setup=id_without_image),
    Case("image_without_row", ["data", "check", "{tmp}/ds"], ["{id}.png", "not in train.csv"],
         setup=image_without_row),
    Case("wrong_size_image", ["data", "check", "{tmp}/ds"], ["{id}.png", "101x64", "expected 101x101"],
         setup=wrong_size_image),
    Case("corrupt_png", ["data", "check", "{tmp}/ds"], ["{id}.png", "corrupt PNG"], setup=corrupt_png),
    Case("malformed_rle", ["data", "check", "{tmp}/ds"], ["train.csv id {id}", "malformed RLE"],
         setup=malformed_rle("5 3 7")),
    Case("rle_value_too_large", ["data", "check", "{tmp}/ds"], ["train.csv id {id}", "too large"],
         setup=malformed_rle("99999999999999999999 3")),
    Case("check_missing_folder", ["data", "check", "{tmp}/nowhere"], ["{tmp}/nowhere", "not found"]),
    # -- writing a dataset --
    Case("synth_out_under_a_file", ["data", "synth", "--out", "{tmp}/afile/synth", "--n", "8"],
         ["{tmp}/afile/synth", "cannot create"], setup=a_file_where_a_folder_goes, absent=["afile/synth"]),
    Case("synth_out_read_only", ["data", "synth", "--out", "{tmp}/ro/synth", "--n", "8"],
         ["{tmp}/ro/synth", "Permission denied"], setup=read_only_folder, absent=["ro/synth"], unprivileged=True),
    Case("synth_negative_seed", ["data", "synth", "--out", "{tmp}/s", "--n", "8", "--seed", "-1"], ["--seed"],
         absent=["s"]),
    # -- the tracking store and the run folders --
    Case("store_corrupt", ["evaluate", "--run-id", "0123456789abcdef"], ["{tmp}/mlflow.db", "not an sqlite database"],
         setup=corrupt_store),
    Case("store_is_a_folder", ["compare", "a", "b"], ["{tmp}/store", "is a folder"], setup=store_folder,
         env={"MLFLOW_TRACKING_URI": "sqlite:///{tmp}/store"}),
    Case("store_uri_invalid", ["evaluate", "--run-id", "0123456789abcdef"], ["tracking store nope://x", "cannot be used"],
         env={"MLFLOW_TRACKING_URI": "nope://x"}),
    Case("store_server_unreachable", ["evaluate", "--run-id", "0123456789abcdef"],
         ["cannot reach the MLflow tracking server", "http://127.0.0.1:{port}"], setup=closed_port,
         env={"MLFLOW_TRACKING_URI": "http://127.0.0.1:{port}"}, timeout=60),
    Case("train_store_unreachable", [*_TRAIN, "data.dir={tmp}/ds"],
         ["cannot reach the MLflow tracking server", "http://127.0.0.1:{port}"], setup=dataset_and_closed_port,
         env={"MLFLOW_TRACKING_URI": "http://127.0.0.1:{port}"}, timeout=120),
    Case("store_not_mlflow", ["evaluate", "--run-id", "0123456789abcdef"],
         ["tracking store http://127.0.0.1:{port}", "cannot be used"], setup=not_an_mlflow_server,
         env={"MLFLOW_TRACKING_URI": "http://127.0.0.1:{port}"}, timeout=120),
    Case("train_store_not_mlflow", [*_TRAIN, "data.dir={tmp}/ds"],
         ["tracking store http://127.0.0.1:{port}", "cannot be used"], setup=not_an_mlflow_server,
         env={"MLFLOW_TRACKING_URI": "http://127.0.0.1:{port}"}, timeout=180),
    Case("train_store_corrupt", [*_TRAIN, "data.dir={tmp}/ds"], ["{tmp}/mlflow.db", "not an sqlite database"],
         setup=dataset_and_corrupt_store),
    Case("store_read_only", [*_TRAIN, "data.dir={tmp}/ds"], ["{tmp}/mlflow.db", "read-only"],
         setup=dataset_and_read_only_store, unprivileged=True),
    Case("store_read_only_existing", [*_TRAIN, "data.dir={tmp}/ds"], ["{tmp}/mlflow.db", "read-only"],
         setup=dataset_and_read_only_mlflow_store, unprivileged=True),
    Case("train_store_uri_invalid", [*_TRAIN, "data.dir={tmp}/ds"], ["tracking store nope://x", "cannot be used"],
         setup=dataset_only, env={"MLFLOW_TRACKING_URI": "nope://x"}),
    Case("runs_dir_read_only", [*_TRAIN, "data.dir={tmp}/ds"], ["{tmp}/ro", "not writable", "SEGNET_RUNS_DIR"],
         setup=dataset_and_read_only_folder, env={"SEGNET_RUNS_DIR": "{tmp}/ro"}, unprivileged=True),
    Case("unknown_run_no_store", ["evaluate", "--run-id", "0123456789abcdef"],
         ["run '0123456789abcdef' not found", "{tmp}/mlflow.db", "does not exist"],
         absent=["mlflow.db", "mlflow.db-segnet.lock"]),  # a mistyped store path creates no empty store
    Case("unknown_run", ["evaluate", "--run-id", "0123456789abcdef"], ["run '0123456789abcdef' not found"],
         setup=mlflow_store),
    Case("predict_out_under_a_file", ["predict", "--run-id", "0123456789abcdef", "--images", "{tmp}/ds/train/images",
                                      "--out", "{tmp}/afile/s.csv"], ["--out {tmp}/afile/s.csv", "cannot write"],
         setup=dataset_and_a_file, absent=["afile/s.csv"]),
    Case("predict_out_read_only", ["predict", "--run-id", "0123456789abcdef", "--images", "{tmp}/ds/train/images",
                                   "--out", "{tmp}/ro/s.csv"], ["--out {tmp}/ro/s.csv", "cannot write"],
         setup=dataset_and_read_only_folder, absent=["ro/s.csv"], unprivileged=True),
    Case("predict_out_is_a_folder", ["predict", "--run-id", "0123456789abcdef", "--images", "{tmp}/ds/train/images",
                                     "--out", "{tmp}/ds"], ["--out {tmp}/ds", "is a folder"],
         setup=dataset_only),
    Case("train_unknown_tag_format", [*_TRAIN, "--tag", "nokey"], ["--tag 'nokey'", "KEY=VALUE"]),
    # -- training on a bad dataset (segnet.train sets TensorFlow up before it reads the data) --
    Case("zero_images_train", [*_TRAIN, "data.dir={tmp}/ds"], ["{tmp}/ds/train.csv", "no training images"],
         setup=zero_images),
    Case("depth_inf_train", [*_TRAIN, "data.dir={tmp}/ds"], ["{tmp}/ds/depths.csv", "{id}", "non-finite"],
         setup=depth("inf")),
    # -- ablation files (read before any child starts) --
    Case("ablate_config_is_a_folder", ["ablate", "--config", "{tmp}/profile"], ["{tmp}/profile", "folder"],
         setup=config_folder),
    Case("ablate_config_broken_yaml", ["ablate", "--config", "{tmp}/ablation.yaml"],
         ["{tmp}/ablation.yaml", "not valid YAML"], setup=ablation_file("variants: [x\n")),
    Case("ablate_config_not_text", ["ablate", "--config", "{tmp}/ablation.yaml"],
         ["{tmp}/ablation.yaml", "not UTF-8"], setup=ablation_file(b"\xff\xfe\x00 binary")),
    Case("ablate_config_a_list", ["ablate", "--config", "{tmp}/ablation.yaml"],
         ["{tmp}/ablation.yaml", "mapping"], setup=ablation_file("- a\n- b\n")),
    Case("ablate_overrides_not_a_list", ["ablate", "--config", "{tmp}/ablation.yaml"],
         ["{tmp}/ablation.yaml", "'overrides'"],
         setup=ablation_file("overrides: 5\nvariants:\n  a:\n    model.decoder: transposed\n")),
    Case("ablate_child_multi_worker", ["ablate", "--config", "{tmp}/ablation.yaml", "train.strategy=multi_worker"],
         ["train.strategy=multi_worker", "--backend ray"],
         setup=ablation_file("variants:\n  a:\n    model.decoder: transposed\n")),
    Case("cv_multi_worker", ["cv", "train.strategy=multi_worker"], ["train.strategy=multi_worker", "fold 0"]),
]

_LEFTOVERS = (".*.tmp-*", ".*.old-*", ".*.download-*", "*.tmp")  # a writer's temporary files


@pytest.fixture(scope="module")
def source(tmp_path_factory) -> Path:
    from segnet.data.synthetic import generate

    return generate(tmp_path_factory.mktemp("bad_input_source") / "ds", n=8, seed=0, progress=False)


def _run(case: Case, tmp: Path, names: dict) -> subprocess.CompletedProcess:
    env = dict(os.environ)
    env.update(
        MLFLOW_TRACKING_URI=f"sqlite:///{tmp / 'mlflow.db'}",
        SEGNET_RUNS_DIR=str(tmp / "runs"),
        NO_ALBUMENTATIONS_UPDATE="1",
    )
    for name in ("TGS_DATA", "TF_CPP_MIN_LOG_LEVEL", "SEGNET_TF_LOG_DEFAULT"):  # segnet's defaults, not yours
        env.pop(name, None)
    env.update({k: v.format(**names) for k, v in case.env.items()})
    argv = [a.format(**names) for a in case.argv]
    prefix = _UNPRIVILEGED if case.unprivileged and _ROOT else []
    return subprocess.run([*prefix, sys.executable, "-m", "segnet", *argv], cwd=tmp, env=env, capture_output=True,
                          text=True, timeout=case.timeout)


@functools.cache
def _can_drop_privileges() -> bool:
    """``_UNPRIVILEGED`` works here and does what it says: a 0o444 file cannot be opened for writing."""
    import tempfile

    if shutil.which("setpriv") is None:
        return False
    with tempfile.TemporaryDirectory() as d:
        f = Path(d) / "ro"
        f.write_text("")
        f.chmod(0o444)
        probe = subprocess.run([*_UNPRIVILEGED, sys.executable, "-c", "import sys; open(sys.argv[1], 'a')", str(f)],
                               capture_output=True, text=True, timeout=60)
        return probe.returncode != 0 and "PermissionError" in probe.stderr


def _run_statuses(db: Path) -> list[str]:
    if db.read_bytes()[:16] != b"SQLite format 3\x00":  # a case that corrupted the store on purpose
        return []
    with sqlite3.connect(db) as con:
        if not con.execute("SELECT 1 FROM sqlite_master WHERE type='table' AND name='runs'").fetchone():
            return []
        return [s for (s,) in con.execute("SELECT status FROM runs")]


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_bad_input_gives_one_line(case: Case, tmp_path: Path, source: Path):
    if case.skip:
        pytest.skip(case.skip)
    if case.unprivileged and _ROOT and not _can_drop_privileges():
        pytest.skip("run as root without setpriv (util-linux): file permissions cannot bind")
    names = {"tmp": str(tmp_path)}
    ctx = Ctx(tmp_path, source)
    try:
        if case.setup is not None:
            names.update(case.setup(ctx) or {})
        proc = _run(case, tmp_path, names)
    finally:
        for cleanup in ctx.cleanups:
            cleanup()
        for p in tmp_path.rglob("*"):  # undo a read-only setup so pytest can clean up
            if p.is_dir() and not p.is_symlink():
                p.chmod(0o755)

    lines = proc.stderr.splitlines()
    report = f"exit {proc.returncode}\nstdout:\n{proc.stdout[-2000:]}\nstderr:\n{proc.stderr[-4000:]}"
    assert "Traceback" not in proc.stderr, report
    assert proc.returncode == 2, report
    assert len(lines) == 1 and lines[0].strip(), report
    line = lines[0]
    assert line.startswith("segnet: error: "), report
    for word in case.expect:
        assert word.format(**names) in line, f"{word.format(**names)!r} not in {line!r}"

    for rel in case.absent:
        assert not (tmp_path / rel.format(**names)).exists(), f"{rel} was left behind"
    leftovers = [str(p) for pattern in _LEFTOVERS for p in tmp_path.rglob(pattern)]
    assert not leftovers, f"temporary files left behind: {leftovers}"
    db = tmp_path / "mlflow.db"
    if db.exists():
        statuses = _run_statuses(db)
        assert "RUNNING" not in statuses, "a run was left RUNNING in the tracking store"
        assert case.opens_run or not statuses, f"bad input must be refused before a run is opened: {statuses}"


def test_config_errors_come_before_tensorflow():
    """Config mistakes (other than the decoder name) fail before TensorFlow's slow, noisy import."""
    code = (
        "import sys\n"
        "from segnet.config import load_config\n"
        "from segnet.errors import ConfigError\n"
        "for o in ('train.lr=.nan', 'train.min_lr=1', 'train.epoch=3', 'foo', 'train.seed=-1'):\n"
        "    try:\n"
        "        load_config(None, [o])\n"
        "    except ConfigError:\n"
        "        pass\n"
        "    else:\n"
        "        raise SystemExit('no error for ' + o)\n"
        "bad = sorted(m for m in sys.modules if m.split('.')[0] in ('tensorflow', 'keras'))\n"
        "raise SystemExit(f'imported {bad[:3]}' if bad else 0)\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr
