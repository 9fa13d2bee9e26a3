"""Signals and concurrency, as users meet them: separate `python -m segnet` processes on one store.

Three trainings on a store that does not exist yet; SIGTERM and Ctrl-C to `train` and to `ablate`
(every run ends KILLED, the parent exits promptly, no process is left); SIGKILL before the first epoch
and mid-training, then resume (same run, every epoch once, the metrics of an uninterrupted run); a
resume or a second ablation while the owner lives is refused with one line.
"""

from __future__ import annotations

import os
import signal
import time

import pytest

from tests.procs import (
    children_of,
    metric_history,
    pids_alive,
    run,
    run_statuses,
    segnet_env,
    spawn,
    tiny_overrides,
    wait_for_state,
)

FOREVER = "train.epochs=100000"  # a run that cannot end by itself before the signal, however slow the host


def _finish(proc, timeout: float = 300) -> str:
    out, _ = proc.communicate(timeout=timeout)
    return out


@pytest.mark.slow  # ~45 s of three concurrent trainings (make test-all)
def test_three_trainings_at_once_on_a_new_store(tiny_synth, tmp_path):
    assert not (tmp_path / "mlflow.db").exists()
    procs = [spawn(["train", *tiny_overrides(tiny_synth, epochs=1), f"train.seed={s}"], tmp_path) for s in range(3)]
    outs = [_finish(p) for p in procs]
    for p, out in zip(procs, outs, strict=True):
        assert p.returncode == 0, out[-3000:]
        assert "run_id: " in out
    assert sorted(run_statuses(tmp_path).values()) == ["FINISHED"] * 3
    # The store is still usable by MLflow itself afterwards.
    from mlflow.tracking import MlflowClient

    c = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    assert [e.name for e in c.search_experiments()] and len(c.search_runs([c.get_experiment_by_name("test").experiment_id])) == 3


def test_resume_while_the_owner_lives_is_refused_and_a_signal_ends_train_killed(tiny_synth, tmp_path):
    """Two trainings at once, each in its own folder and store. While they run, a resume of the first's
    config is refused in one line and opens no run; then SIGTERM to the first and SIGINT (Ctrl-C) to the
    second: each exits 128 + the signal within a minute, without a traceback, its run KILLED."""
    over = [*tiny_overrides(tiny_synth), FOREVER]
    dirs = {sig: tmp_path / sig.name for sig in (signal.SIGTERM, signal.SIGINT)}
    owners = {}
    try:
        for sig, d in dirs.items():
            d.mkdir()
            owners[sig] = spawn(["train", *over], d)
        states = {sig: wait_for_state(owners[sig], d / "runs", 0) for sig, d in dirs.items()}

        d, owner = dirs[signal.SIGTERM], owners[signal.SIGTERM]
        second = run(["train", *over, "train.resume=true"], d, timeout=300)
        assert second.returncode == 2, second.stdout[-2000:] + second.stderr[-2000:]
        err = [line for line in second.stderr.splitlines() if line.startswith("segnet:")]
        name = states[signal.SIGTERM].parent.name
        assert len(err) == 1 and f"run {name}" in err[0] and f"pid {owner.pid}" in err[0], second.stderr
        assert "still running" in err[0] and "Traceback" not in second.stderr
        assert len(run_statuses(d)) == 1  # no second run was opened

        t0 = time.time()
        for sig, proc in owners.items():
            proc.send_signal(sig)
        for sig, proc in owners.items():
            out = _finish(proc, timeout=120)
            assert proc.returncode == 128 + sig, (sig.name, out[-3000:])
            assert time.time() - t0 < 60, sig.name
            assert "Traceback" not in out, sig.name
            assert list(run_statuses(dirs[sig]).values()) == ["KILLED"], sig.name
    finally:
        for proc in owners.values():
            if proc.poll() is None:
                proc.kill()
                proc.communicate()


def test_sigkill_then_resume_is_the_uninterrupted_run(tiny_synth, tmp_path):
    """Killed before its first epoch ends, then again mid-training, a run resumed twice logs every epoch
    once, in the same MLflow run, with the losses of a run that was never interrupted."""
    epochs = 4
    over = tiny_overrides(tiny_synth, epochs=epochs)
    ref_dir, dir_ = tmp_path / "uninterrupted", tmp_path / "killed"
    ref_dir.mkdir()
    dir_.mkdir()
    ref = spawn(["train", *over], ref_dir)  # runs alongside: its own store and runs folder

    first = spawn(["train", *over], dir_)
    state = wait_for_state(first, dir_ / "runs", -1)
    first.kill()  # SIGKILL before the first epoch ended: no handler runs, the run stays RUNNING
    first.communicate()
    run_id = state.parent.name
    assert run_statuses(dir_) == {run_id: "RUNNING"}

    second = spawn(["train", *over, "train.resume=true"], dir_)
    wait_for_state(second, dir_ / "runs", 0)
    t0 = time.monotonic()
    wait_for_state(second, dir_ / "runs", 1)
    time.sleep((time.monotonic() - t0) / 2)  # half an epoch on: among epoch 3's batches, not between epochs
    assert second.poll() is None, "the resumed run ended before it could be killed mid-epoch"
    second.kill()  # mid-epoch
    out2 = _finish(second)
    assert f"resume: run {run_id}" in out2, out2[-3000:]

    third = run(["train", *over, "train.resume=true"], dir_)
    assert third.returncode == 0, third.stdout[-3000:] + third.stderr[-3000:]
    assert f"resume: run {run_id}" in third.stdout and f"run_id: {run_id}" in third.stdout
    assert run_statuses(dir_) == {run_id: "FINISHED"}

    ref_out = _finish(ref)
    assert ref.returncode == 0, ref_out[-3000:]
    (ref_id,) = run_statuses(ref_dir)
    for key in ("loss", "val_loss", "val_tgs_map", "lr"):
        got, want = metric_history(dir_, run_id, key), metric_history(ref_dir, ref_id, key)
        assert [s for s, _ in got] == list(range(epochs)), (key, got)  # every epoch once
        assert [s for s, _ in want] == list(range(epochs))
        for (_, a), (_, b) in zip(got, want, strict=True):
            assert a == pytest.approx(b, rel=1e-4, abs=1e-5), (key, got, want)
    # Finished runs keep only the best checkpoint (and the resume state) on disk.
    for folder in (dir_ / "runs" / run_id, ref_dir / "runs" / ref_id):  # last.keras deleted, resumed or not
        assert sorted(p.name for p in folder.glob("*.keras")) == ["best.keras"], folder


def _ablation_file(tmp_path, data_dir) -> str:
    f = tmp_path / "ablation.yaml"
    over = "\n".join(f"  - {o}" for o in [*tiny_overrides(data_dir), FOREVER])
    f.write_text(f"seeds: 1\noverrides:\n{over}\nvariants:\n  transposed_k3:\n    model.decoder: transposed\n"
                 "  upsampling_nearest:\n    model.decoder: upsampling\n")
    return str(f)


@pytest.mark.parametrize("how", [pytest.param("SIGTERM to its pid", marks=pytest.mark.slow),  # make test-all
                                 "Ctrl-C to its process group"])
def test_signal_stops_ablate_and_every_child(how, tiny_synth, tmp_path):
    abl = _ablation_file(tmp_path, tiny_synth)
    proc = spawn(["ablate", "--config", abl, "--jobs", "2"], tmp_path, new_group=True)
    try:
        wait_for_state(proc, tmp_path / "runs", 0)
        kids = children_of(proc.pid)
        assert kids, "the children run as processes of their own"
        # A second ablation of the same config while this one runs is refused, not joined.
        again = run(["ablate", "--config", abl, "--jobs", "2"], tmp_path, timeout=300)
        report = again.stdout[-2000:] + again.stderr
        err = again.stderr.splitlines()
        assert again.returncode == 2 and len(err) == 1 and "Traceback" not in again.stderr, report
        assert err[0].startswith("segnet: error: ") and "still running" in err[0] and f"pid {proc.pid}" in err[0], report
        t0 = time.time()
        if how.startswith("SIGTERM"):
            proc.send_signal(signal.SIGTERM)
            want = 128 + signal.SIGTERM
        else:
            os.killpg(proc.pid, signal.SIGINT)
            want = 130
        out = _finish(proc, timeout=180)
        assert proc.returncode == want, out[-3000:]
        assert time.time() - t0 < 90, "the parent must not wait for queued children to train"
        assert not pids_alive(kids), "every child process ended"
        statuses = run_statuses(tmp_path)
        assert len(statuses) == 3 and set(statuses.values()) == {"KILLED"}, (statuses, out[-6000:])
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.communicate()


def test_runs_folder_that_cannot_be_created_opens_no_run(tiny_synth, tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")  # mkdir under a file fails for every user, root included
    env = segnet_env(tmp_path, SEGNET_RUNS_DIR=str(blocker / "runs"))
    out = run(["train", *tiny_overrides(tiny_synth)], tmp_path, env=env)
    assert out.returncode == 2, out.stdout[-2000:] + out.stderr
    err = [line for line in out.stderr.splitlines() if line.startswith("segnet:")]
    assert len(err) == 1 and "SEGNET_RUNS_DIR" in err[0] and str(blocker) in err[0], out.stderr
    assert "Traceback" not in out.stderr
    assert "RUNNING" not in run_statuses(tmp_path).values()


# A signal between a run's creation and its guard: the process-wide net (tracking._open_runs, ended by
# the CLI on the way out) ends the run, whatever statement the signal interrupts.
_SIGTERM_IN_THE_WINDOW = """
import os, signal, sys, time
from segnet import tracking
real_create_run = tracking.create_run
def create_run_then_sigterm(*args, **kwargs):  # the signal comes after creation, before run_guard
    run = real_create_run(*args, **kwargs)
    os.kill(os.getpid(), signal.SIGTERM)
    time.sleep(5)
    return run
tracking.create_run = create_run_then_sigterm
from segnet.cli import main
sys.exit(main(sys.argv[1:]))
"""


def test_sigterm_between_run_creation_and_its_guard_ends_it_killed(tiny_synth, tmp_path):
    import subprocess
    import sys

    from segnet import paths

    out = subprocess.run([sys.executable, "-c", _SIGTERM_IN_THE_WINDOW, "train", *tiny_overrides(tiny_synth)],
                         capture_output=True, text=True, env=segnet_env(tmp_path), cwd=paths.ROOT, timeout=300)
    assert out.returncode == 143, out.stdout[-2000:] + out.stderr[-2000:]
    statuses = run_statuses(tmp_path)
    assert list(statuses.values()) == ["KILLED"], statuses


def test_signal_during_run_creation_is_deferred_until_the_run_is_known(tmp_path, monkeypatch):
    """create_run makes the run RUNNING and records it in one step a signal cannot cut: the SIGTERM that
    comes while MLflow creates the run is raised after it is recorded, so it can be ended."""
    from mlflow.tracking import MlflowClient

    from segnet import errors, tracking
    from tests.procs import store_uri

    uri = store_uri(tmp_path)
    real_create = MlflowClient.create_run

    def create_then_signal(self, *args, **kwargs):
        r = real_create(self, *args, **kwargs)
        os.kill(os.getpid(), signal.SIGTERM)  # arrives here, before create_run returns
        time.sleep(0.2)
        return r

    monkeypatch.setattr(MlflowClient, "create_run", create_then_signal)
    monkeypatch.setattr(errors, "_stop_signal", None)
    previous = signal.signal(signal.SIGTERM, errors.raise_on_sigterm)
    try:
        with pytest.raises(errors.Terminated):
            tracking.create_run(uri, "window", "w", {})
    finally:
        signal.signal(signal.SIGTERM, previous)
    (run_id,) = tracking._open_runs
    assert tracking.end_open_runs(stopped=True) == [run_id]
    assert MlflowClient(uri).get_run(run_id).info.status == "KILLED" and not tracking._open_runs


def test_same_new_dataset_logged_by_two_runs_at_once_is_retried(tmp_path, monkeypatch):
    """Parallel children log the same new dataset: MLflow looks it up, then inserts it, and the slower
    insert hits the unique key (CI saw a cv fold fail so). The retry links the row the other one made."""
    from mlflow.exceptions import MlflowException
    from mlflow.tracking import MlflowClient

    from segnet import tracking
    from tests.procs import store_uri

    uri = store_uri(tmp_path)
    first, second = (tracking.create_run(uri, "race", n, {}) for n in ("a", "b"))
    real, calls = MlflowClient.log_inputs, []

    def racing(self, run_id, datasets=None, **kwargs):
        calls.append(run_id)
        if len(calls) == 1:  # the other run inserts the row between this one's lookup and insert
            real(self, first.run_id, datasets, **kwargs)
            raise MlflowException("(sqlite3.IntegrityError) UNIQUE constraint failed: datasets.experiment_id, "
                                  "datasets.name, datasets.digest")
        return real(self, run_id, datasets, **kwargs)

    monkeypatch.setattr(MlflowClient, "log_inputs", racing)
    tracking.log_dataset(second, "tgs", "abc123", tmp_path, "training", {"images": 3})
    assert calls == [second.run_id, second.run_id]
    for r in (first, second):
        (ds,) = MlflowClient(uri).get_run(r.run_id).inputs.dataset_inputs
        assert (ds.dataset.name, ds.dataset.digest) == ("tgs", "abc123")
    monkeypatch.setattr(MlflowClient, "log_inputs", lambda *a, **k: (_ for _ in ()).throw(MlflowException("other")))
    with pytest.raises(MlflowException, match="other"):  # any other error is not retried
        tracking.log_dataset(second, "tgs", "abc123", tmp_path, "validation", {})
    tracking.end_open_runs(stopped=False)
