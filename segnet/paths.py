"""Every path segnet uses by default, defined once; ``tgs_data_env`` is the one reader of ``$TGS_DATA``."""

from __future__ import annotations

import os
from pathlib import Path

from segnet.errors import DataError


def _project_root() -> Path:
    # An editable install keeps the package inside the checkout; otherwise work from the current folder.
    here = Path(__file__).resolve().parents[1]
    return here if (here / "pyproject.toml").exists() else Path.cwd()


ROOT = _project_root()
CONFIGS = ROOT / "configs"
BASE_CONFIG = CONFIGS / "base.yaml"
QUICK_CONFIG = CONFIGS / "quick.yaml"
ABLATION_CONFIG = CONFIGS / "ablation" / "default.yaml"
DATA = ROOT / "data"
SYNTHETIC_DIR = DATA / "synthetic"
TGS_DIR = DATA / "tgs"
FOLDS_DIR = DATA / "folds"
# Local scratch: checkpoints and resume state, one folder per MLflow run ($SEGNET_RUNS_DIR moves it).
RUNS_DIR = Path(os.environ.get("SEGNET_RUNS_DIR") or ROOT / "runs")
SHARED_TGS = ROOT.parent / "shared" / "datasets" / "tgs-salt"
DEFAULT_TRACKING_URI = f"sqlite:///{ROOT / 'mlflow.db'}"


def tgs_data_env(*, strict: bool = False) -> Path | None:
    """The one reader of ``$TGS_DATA`` (a real TGS folder in the Kaggle layout): the folder, or None if unset.

    Set to a folder without ``train.csv``: a DataError when ``strict`` (training must not fall back to other
    data behind the user's back), else None (the caller looks elsewhere).
    """
    env = os.environ.get("TGS_DATA")
    if not env:
        return None
    root = Path(env).expanduser()
    if (root / "train.csv").is_file():
        return root
    if strict:
        raise DataError(f"TGS_DATA={env}: no train.csv there (not a Kaggle-layout dataset)")
    return None


def real_tgs_dir() -> Path | None:
    """The real TGS training data for tests and benchmarks: $TGS_DATA, then ../shared; None if absent."""
    if (env := tgs_data_env()) is not None:
        return env
    return SHARED_TGS if (SHARED_TGS / "train.csv").is_file() else None
