"""``python -m segnet data ...``: check, synth, get. Each returns an exit code; problems raise DataError."""

from __future__ import annotations

import importlib.util
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

from segnet import paths
from segnet.atomic import remove, temp_path
from segnet.data import synthetic
from segnet.data.tgs import install_dir, synthetic_params, validate
from segnet.errors import DataError

COMPETITION = "tgs-salt-identification-challenge"

HOW_TO_GET = f"""\
The real TGS Salt data comes from Kaggle (competition data: accept the rules on the competition page first).
  1. pip install kaggle
  2. put your API token in ~/.kaggle/kaggle.json (Kaggle > Settings > API > Create New Token),
     or set KAGGLE_USERNAME and KAGGLE_KEY
  3. kaggle competitions download -c {COMPETITION}
  4. unzip it into data/tgs (and train.zip into data/tgs/train, test.zip into data/tgs/test), so that
     data/tgs/train/images, data/tgs/train/masks, data/tgs/train.csv and data/tgs/depths.csv exist
     (then `make data` again checks it), or keep it elsewhere and set TGS_DATA=/path/to/it
Until then segnet trains on synthetic data in the same layout (data/synthetic)."""


def cmd_check(dir: str | Path) -> int:  # noqa: A002
    """Validate a dataset folder and print its counts."""
    summary = validate(Path(dir))
    print(summary)
    print("ok")
    return 0


def cmd_synth(out: str | Path | None = None, n: int | None = None, seed: int | None = None) -> int:
    """Generate a synthetic dataset (atomically) and print its counts."""
    out = Path(out) if out else paths.SYNTHETIC_DIR
    n = synthetic.DEFAULT_N if n is None else int(n)
    seed = synthetic.DEFAULT_SEED if seed is None else int(seed)
    if n < 1:
        raise DataError(f"--n must be at least 1, got {n}")
    if not 0 <= seed < 2**32:
        raise DataError(f"--seed must be in [0, {2**32 - 1}], got {seed}")
    print(f"synthetic: {n} images (+{n // 10} test), seed {seed} -> {out}", flush=True)
    synthetic.generate(out, n=n, seed=seed)
    return cmd_check(out)


def _kaggle_credentials() -> str | None:
    if os.environ.get("KAGGLE_USERNAME") and os.environ.get("KAGGLE_KEY"):
        return "KAGGLE_USERNAME/KAGGLE_KEY"
    folder = Path(os.environ.get("KAGGLE_CONFIG_DIR", Path.home() / ".kaggle")).expanduser()
    token = folder / "kaggle.json"
    return str(token) if token.is_file() else None


def _kaggle_command() -> list[str] | None:
    exe = shutil.which("kaggle")
    if exe:
        return [exe]
    if importlib.util.find_spec("kaggle") is not None:
        return [sys.executable, "-c", "import sys; from kaggle.cli import main; sys.exit(main())"]
    return None


def _unzip_all(folder: Path) -> None:
    """Extract every zip in ``folder``; a nested train.zip/test.zip goes to train/ and test/."""
    for _ in range(3):  # the competition zip holds train.zip and test.zip
        zips = sorted(folder.rglob("*.zip"))
        if not zips:
            return
        for z in zips:
            target = z.parent if z.stem not in ("train", "test") else z.parent / z.stem
            try:
                with zipfile.ZipFile(z) as zf:
                    zf.extractall(target)
            except zipfile.BadZipFile:
                raise DataError(f"{z}: not a valid zip file (interrupted download?)") from None
            z.unlink()


def _download_kaggle(cmd: list[str], out: Path) -> Path:
    tmp = temp_path(out, "download")
    try:
        tmp.mkdir(parents=True)
    except OSError as e:
        raise DataError(f"{out}: cannot create the download folder {tmp} ({e.strerror or e})") from None
    try:
        print(f"data: downloading {COMPETITION} with the Kaggle CLI into {out}", flush=True)
        proc = subprocess.run([*cmd, "competitions", "download", "-c", COMPETITION, "-p", str(tmp)],
                              capture_output=True, text=True)
        if proc.returncode != 0:
            last = (proc.stderr or proc.stdout).strip().splitlines()
            detail = last[-1] if last else f"exit code {proc.returncode}"
            raise DataError(f"kaggle competitions download -c {COMPETITION} failed: {detail} "
                            "(accepted the competition rules on kaggle.com?)")
        _unzip_all(tmp)
        validate(tmp)
        install_dir(tmp, out)
        return out
    finally:
        remove(tmp)


def _synth_defaults() -> tuple[int, int]:
    """The default config's synth_n/synth_seed, so `make data` makes what `make train` would use."""
    try:
        from segnet.config import load_config

        cfg = load_config()
        return int(cfg.data.synth_n), int(cfg.data.synth_seed)
    except Exception:  # noqa: BLE001 - no usable config: the generator's defaults
        return synthetic.DEFAULT_N, synthetic.DEFAULT_SEED


def cmd_get() -> int:
    """`make data`: real data via the Kaggle CLI when possible; otherwise explain and make synthetic data."""
    tgs = paths.TGS_DIR
    if (tgs / "train.csv").is_file():
        print(f"data: real TGS data already in {tgs}")
        return cmd_check(tgs)
    env = paths.tgs_data_env()  # set but without train.csv: download into data/tgs as if unset
    if env is not None:
        print(f"data: TGS_DATA={os.environ['TGS_DATA']} is used for the real data")
        return cmd_check(env)
    creds, cmd = _kaggle_credentials(), _kaggle_command()
    if creds and cmd:
        _download_kaggle(cmd, tgs)
        return cmd_check(tgs)
    missing = [w for w, ok in (("Kaggle credentials", creds), ("the kaggle CLI", cmd)) if not ok]
    print(f"data: no real TGS data ({' and '.join(missing)} not found).")
    print(HOW_TO_GET)
    syn = paths.SYNTHETIC_DIR
    n, seed = _synth_defaults()
    params = synthetic_params(syn) if (syn / "train.csv").is_file() else None
    if params is None or params.get("n") != n or params.get("seed") != seed:
        return cmd_synth(syn, n, seed)
    print(f"data: synthetic data already in {syn} (n={n}, seed={seed})")
    return cmd_check(syn)

