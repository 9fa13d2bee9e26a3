"""Command line: argument parsing only; every command calls a function of the package.

    python -m segnet data synth --out DIR [--n N] [--seed S]
    python -m segnet data check DIR
    python -m segnet data get
    python -m segnet shapes [--config FILE] [key=value ...]
    python -m segnet train [--config FILE] [key=value ...]
    python -m segnet evaluate (--run-id ID | --model models:/NAME@ALIAS) [key=value ...]
    python -m segnet predict (--run-id ID | --model models:/NAME@ALIAS) --images DIR --out submission.csv [--tta]
    python -m segnet register --run-id ID [--name segnet-tgs] [--alias champion]
    python -m segnet ablate [--config FILE] [--seeds N] [--jobs N] [--resume ID] [--plan] [key=value ...]
    python -m segnet ablate ... --backend ray [--address auto|HOST:PORT|ray://HOST:10001]
    python -m segnet ablate --summarize ID [tracking.uri=URI]
    python -m segnet cv [--config FILE] [--jobs N] [--resume ID] [--plan] [--backend local|ray] [key=value ...]
    python -m segnet cv --summarize ID [key=value ...]
    python -m segnet bench [--quick] [--levers] [--out FILE]
    python -m segnet ui [--host H] [--port P]

Errors a user can cause print one line on stderr and exit with code 2.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import signal
import sys

from segnet.errors import SegnetError, raise_on_sigint, raise_on_sigterm, stop_requested


def _parser() -> argparse.ArgumentParser:
    """Every command's arguments, declared in one place (long by nature: declarations only, no logic)."""
    p = argparse.ArgumentParser(prog="segnet", description="Which decoder should a U-Net use? (TGS salt)")
    sub = p.add_subparsers(dest="command", required=True)

    data = sub.add_parser("data", help="generate, check or fetch a dataset in the Kaggle layout")
    dsub = data.add_subparsers(dest="data_command", required=True)
    synth = dsub.add_parser("synth", help="generate the synthetic salt-like dataset")
    synth.add_argument("--out", required=True, help="output folder (Kaggle layout)")
    synth.add_argument("--n", type=int, default=1200, help="number of training images")
    synth.add_argument("--seed", type=int, default=0)
    check = dsub.add_parser("check", help="validate a dataset folder; exit 2 on the first problem")
    check.add_argument("dir")
    dsub.add_parser("get", help="download the real data with the Kaggle CLI, else generate data/synthetic")

    def with_config(sp):
        sp.add_argument("--config", default=None, help="profile YAML on top of configs/base.yaml "
                        "(default configs/quick.yaml)")
        sp.add_argument("overrides", nargs="*", help="dotted config overrides, e.g. train.epochs=5")
        return sp

    with_config(sub.add_parser("shapes", help="per-stage shapes and the decoder's overlap pattern"))
    tr = with_config(sub.add_parser("train", help="train one model; prints run_id: <id>"))
    tr.add_argument("--parent-run-id", default=None,
                    help="nest the run under this MLflow run (what ablate does for each child)")
    tr.add_argument("--tag", action="append", default=[], metavar="KEY=VALUE",
                    help="an extra MLflow tag on the run (repeatable)")
    ev = sub.add_parser("evaluate", help="recompute every metric of a run's best model on a dataset")
    _run_or_model(ev)
    ev.add_argument("overrides", nargs="*", help="e.g. data.dir=../shared/datasets/tgs-salt")
    pr = sub.add_parser("predict", help="Kaggle submission from a run's model")
    _run_or_model(pr)
    pr.add_argument("--images", required=True, help="folder of 101x101 PNG images")
    pr.add_argument("--out", default="submission.csv")
    pr.add_argument("--tta", action=argparse.BooleanOptionalAction, default=None,
                    help="horizontal-flip test-time augmentation (default: the run's eval.tta)")
    ab = with_config(sub.add_parser("ablate", help="every decoder variant on the same split and seeds"))
    ab.set_defaults(config=None)
    ab.add_argument("--seeds", type=int, default=None, help="seeds per variant (default: the ablation file's)")
    ab.add_argument("--jobs", type=int, default=1, help="children trained in parallel")
    ab.add_argument("--resume", default=None, help="ablation_run_id to resume (default: same config hash)")
    _backend(ab, "child")
    _other_scheduler(ab, "child")
    cv = with_config(sub.add_parser("cv", help="k-fold cross-validation: one child run per fold, the "
                                    "out-of-fold score, a fold ensemble; prints cv_run_id: <id>"))
    cv.add_argument("--jobs", type=int, default=1, help="folds trained in parallel")
    cv.add_argument("--resume", default=None, help="cv_run_id to resume (default: same config hash)")
    _backend(cv, "fold")
    _other_scheduler(cv, "fold")
    rg = sub.add_parser("register", help="register a run's logged model in the MLflow model registry")
    rg.add_argument("--run-id", required=True)
    rg.add_argument("--name", default="segnet-tgs", help="registered model name (default segnet-tgs)")
    rg.add_argument("--alias", default="champion", help="alias set on the new version (default champion; "
                    "'' for none)")
    co = sub.add_parser("compare", help="paired bootstrap of finished runs' final scores against a reference run")
    co.add_argument("ref", help="run id of the reference")
    co.add_argument("runs", nargs="+", help="run ids to compare with it (same data and fold)")
    co.add_argument("--bootstrap", type=int, default=2000, help="bootstrap resamples")
    be = sub.add_parser("bench", help="speed, memory and FLOP/s of every decoder vs the baseline U-Net")
    be.add_argument("--quick", action="store_true", help="a short run (a minute or two)")
    be.add_argument("--levers", action="store_true",
                    help="the default model lever by lever (128 resize, 112 pad, fused BN) vs the baseline")
    be.add_argument("--out", default=None, help="CSV/JSON output prefix (default bench/results, bench/levers)")
    ui = sub.add_parser("ui", help="serve the MLflow UI for the tracking store")
    ui.add_argument("--host", default="127.0.0.1")
    ui.add_argument("--port", type=int, default=5000)
    ui.add_argument("--verbose", action="store_true", help="show the MLflow server's own log (default: to a file)")
    return p


def _backend(sp, child: str) -> None:
    """``--backend`` and ``--address`` of `ablate` and `cv`: where their children run (``segnet.cluster``)."""
    sp.add_argument("--backend", choices=("local", "ray"), default=None,
                    help=f"local: each {child} a process of this machine, --jobs at once (default); ray: each "
                    f"{child} a task of a Ray cluster asking cluster.cpus_per_child / cluster.gpus_per_child")
    sp.add_argument("--address", default=None, metavar="ADDR", help="the Ray cluster to join (auto, HOST:PORT, "
                    "ray://HOST:10001); default: $RAY_ADDRESS, else a Ray cluster started on this machine")


def _other_scheduler(sp, child: str) -> None:
    """``--plan`` and ``--summarize ID`` of `ablate` and `cv`: their children run by a scheduler of one's own."""
    sp.add_argument("--plan", action="store_true", help=f"train nothing: create (or find) the parent run and print "
                    f"one self-contained shell command per {child} not finished yet (Slurm arrays, Kubernetes Jobs)")
    sp.add_argument("--summarize", default=None, metavar="ID", help=f"end the parent run ID from the {child} runs "
                    "finished so far, wherever they ran: the summary a run ends with")


def _run_or_model(sp) -> None:
    """``--run-id`` or ``--model``: exactly one of the two (checked in ``segnet.runs.resolve_run_id``)."""
    sp.add_argument("--run-id", default=None, help="the training run whose model to use")
    sp.add_argument("--model", default=None, metavar="URI",
                    help="a registered model instead: models:/<name>@<alias> or models:/<name>/<version>")


def main(argv: list[str] | None = None) -> int:
    from segnet import tfnoise

    tfnoise.install()  # TensorFlow's start-up lines off stderr (unless TF_CPP_MIN_LOG_LEVEL is set)
    args = _parser().parse_args(argv)
    _follow_parent()
    with contextlib.suppress(ValueError):  # SIGTERM cleans up like Ctrl-C (main thread only)
        signal.signal(signal.SIGTERM, raise_on_sigterm)
        if signal.getsignal(signal.SIGINT) is signal.default_int_handler:
            signal.signal(signal.SIGINT, raise_on_sigint)
    try:
        return _dispatch(args) or 0
    except SegnetError as e:
        if stop_requested():  # a signal that surfaced as another error (e.g. a child that was stopped)
            return _stopped(stop_requested())
        print(f"segnet: error: {_one_line(e)}", file=sys.stderr)
        return e.exit_code
    except KeyboardInterrupt:
        return _stopped(stop_requested() or signal.SIGINT)
    except Exception as e:
        if stop_requested():  # TensorFlow re-raises an interrupt inside its pipeline as its own error
            return _stopped(stop_requested())
        if isinstance(e, OSError):  # the environment, not segnet: an unwritable folder, a full disk
            where = f": {e.filename}" if e.filename else ""
            print(f"segnet: error: {e.strerror or _one_line(e)}{where}", file=sys.stderr)
            return 2
        raise


def _stopped(signum: int) -> int:
    print("segnet: interrupted" if signum == signal.SIGINT else f"segnet: stopped by signal {signum}",
          file=sys.stderr)
    return 128 + signum


def _one_line(e: BaseException) -> str:
    return " ".join(str(e).split())


def _follow_parent() -> None:
    """A child started by ``segnet ablate`` (SEGNET_PARENT_PID set) ends with its parent, even a
    SIGKILLed one: on Linux the kernel sends it SIGTERM when the parent dies, so its run ends KILLED."""
    parent = os.environ.get("SEGNET_PARENT_PID")
    if not parent or not sys.platform.startswith("linux"):
        return
    import ctypes

    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    if os.getppid() != int(parent):  # the parent died before the line above
        raise SystemExit(128 + signal.SIGTERM)


def _dispatch(args) -> int | None:
    """Run the command. Each command's module is imported here, on demand: a usage or config error
    must come in a second, without importing TensorFlow or MLflow for commands that do not need them."""
    try:
        return _COMMANDS[args.command](args) or 0
    except BaseException as e:
        _end_open_runs(stopped=isinstance(e, KeyboardInterrupt) or stop_requested() is not None)
        raise


def _end_open_runs(stopped: bool) -> None:
    """A command that ends with an exception leaves no run RUNNING: a Ctrl-C or SIGTERM between a run's
    creation and its guard (or an error there) would otherwise do so. Only if MLflow was used at all."""
    tracking = sys.modules.get("segnet.tracking")
    if tracking is not None:
        tracking.end_open_runs(stopped)


def _data(args) -> int:
    from segnet.data import commands

    if args.data_command == "synth":
        return commands.cmd_synth(args.out, args.n, args.seed)
    if args.data_command == "check":
        return commands.cmd_check(args.dir)
    return commands.cmd_get()


def _shapes(args) -> None:
    from segnet.config import load_config
    from segnet.models.shapes import describe

    print(describe(load_config(args.config, args.overrides)))


def _train(args) -> None:
    from segnet.config import load_config

    cfg = load_config(args.config, args.overrides)
    tags = {}
    for item in args.tag:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise SegnetError(f"--tag '{item}' must look like KEY=VALUE")
        tags[key] = value
    from segnet.train import train

    train(cfg, parent_run_id=args.parent_run_id, extra_tags=tags)


def _evaluate(args) -> None:
    from segnet.evaluate import evaluate_run
    from segnet.runs import resolve_run_id

    evaluate_run(resolve_run_id(args.run_id, args.model, args.overrides), args.overrides)


def _predict(args) -> None:
    from segnet.predict import predict_run
    from segnet.runs import resolve_run_id

    predict_run(resolve_run_id(args.run_id, args.model), args.images, args.out, tta=args.tta)


def _register(args) -> None:
    from segnet.runs import register

    register(args.run_id, args.name, args.alias or None)


def _ablate(args) -> None:
    from segnet import ablate

    if args.summarize:
        _summarize_alone(args, "config", "seeds", "resume", "plan", "backend", "address")
        ablate.summarize_run(args.summarize, args.overrides)
    elif args.plan:
        _plan_alone(args)
        _print_plan(ablate.plan_lines, args.config, args.overrides, seeds=args.seeds, resume=args.resume)
    else:
        ablate.ablate(args.config, args.overrides, seeds=args.seeds, jobs=args.jobs, resume=args.resume,
                      backend=args.backend or "local", address=args.address)


def _cv(args) -> None:
    from segnet import cv

    if args.summarize:
        _summarize_alone(args, "config", "resume", "plan", "backend", "address")
        cv.summarize_run(args.summarize, args.overrides)
    elif args.plan:
        _plan_alone(args)
        _print_plan(cv.plan_lines, args.config, args.overrides, resume=args.resume)
    else:
        cv.cv(args.config, args.overrides, jobs=args.jobs, resume=args.resume, backend=args.backend or "local",
              address=args.address)


def _summarize_alone(args, *options: str) -> None:
    """``--summarize ID`` reads the plan and the config from the parent run: other options would be ignored."""
    given = [f"--{o}" for o in options if getattr(args, o)]
    if given:
        raise SegnetError(f"--summarize ID reads everything from the parent run; drop {', '.join(given)}")


def _plan_alone(args) -> None:
    """``--plan`` prints the commands for a scheduler of one's own: none of segnet's runs them."""
    given = [f"--{o}" for o in ("backend", "address") if getattr(args, o)]
    if given:
        raise SegnetError(f"--plan trains nothing (its commands are for a scheduler of your own); drop {', '.join(given)}")


def _print_plan(plan_lines, *args, **kwargs) -> None:
    """``--plan``: stdout gets the children's commands alone, one a line (a Slurm array task reads line N);
    whatever planning prints (the run id, notes, how to summarize) goes to stderr."""
    with contextlib.redirect_stdout(sys.stderr):
        lines = plan_lines(*args, **kwargs)
    for line in lines:
        print(line, flush=True)


def _compare(args) -> None:
    from segnet.ablate import compare

    compare(args.ref, args.runs, args.bootstrap)


def _bench(args) -> None:
    from segnet.bench import bench

    bench(quick=args.quick, out=args.out, levers=args.levers)


def _ui(args) -> int:
    from segnet.ui import serve

    return serve(args.host, args.port, verbose=args.verbose)


_COMMANDS = {"data": _data, "shapes": _shapes, "train": _train, "evaluate": _evaluate, "predict": _predict,
             "register": _register, "ablate": _ablate, "cv": _cv, "compare": _compare, "bench": _bench, "ui": _ui}
