"""Every path segnet uses by default, defined once."""

from __future__ import annotations

import os
from pathlib import Path


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


def real_tgs_dir() -> Path | None:
    """The real TGS training data for tests and benchmarks: $TGS_DATA, then ../shared; None if absent."""
    for cand in (os.environ.get("TGS_DATA"), SHARED_TGS):
        if cand and (Path(cand) / "train.csv").exists():
            return Path(cand)
    return None
