"""Which dataset a config means, and reading it into memory.

* ``resolve_data_dir`` picks the folder, and says why: ``data.dir``, else ``$TGS_DATA``
  (``segnet.paths.tgs_data_env``), else ``data/tgs``, else ``data/synthetic`` (generated when absent or
  made with other parameters).
* ``load_dataset(cfg)`` reads it once and returns a :class:`LoadedData`: the arrays and where they came from.

TensorFlow is not imported here: finding and reading the data (and its errors) stay fast.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from segnet import paths
from segnet.data.tgs import dataset_kind, fingerprint, read_dataset, synthetic_params
from segnet.errors import DataError


def resolve_data_dir(
    cfg_dir: str | Path | None,
    synth_n: int = 1200,
    synth_seed: int = 0,
    generate: bool = True,
) -> tuple[Path, str]:
    """Which dataset to use, and why: an explicit dir, else $TGS_DATA, else data/tgs, else data/synthetic.

    data/synthetic is generated (``synth_n`` images, ``synth_seed``) when absent or made with other
    parameters.
    """
    if cfg_dir not in (None, ""):
        root = Path(cfg_dir).expanduser()
        if not (root / "train.csv").is_file():
            what = "not found" if not root.exists() else "has no train.csv (not a Kaggle-layout dataset)"
            raise DataError(f"data.dir={cfg_dir}: {what}")
        return root, "data.dir is set"
    env = paths.tgs_data_env(strict=True)
    if env is not None:
        return env, "$TGS_DATA is set"
    if (paths.TGS_DIR / "train.csv").is_file():
        return paths.TGS_DIR, f"real data found in {paths.TGS_DIR}"
    root = paths.SYNTHETIC_DIR
    why = f"no data.dir, no $TGS_DATA, no {paths.TGS_DIR / 'train.csv'}: synthetic data"
    have = synthetic_params(root) if (root / "train.csv").is_file() else None
    if have is not None and have.get("n") == int(synth_n) and have.get("seed") == int(synth_seed):
        return root, f"{why} (n={synth_n}, seed={synth_seed})"
    if not generate:
        raise DataError(f"{root}: no synthetic dataset with n={synth_n}, seed={synth_seed}; run `make data`")
    from segnet.data.synthetic import generate as synth

    action = "regenerated" if have is not None else "generated"
    print(f"data: generating {synth_n} synthetic images (seed {synth_seed}) in {root}", flush=True)
    synth(root, n=int(synth_n), seed=int(synth_seed))
    return root, f"{why}, {action} (n={synth_n}, seed={synth_seed})"


@dataclass(frozen=True, eq=False, repr=False)
class LoadedData:
    """A dataset in memory and where it came from.

    images (N,101,101,1) float32 in [0,1]; masks (N,101,101,1) float32 in {0,1}; ids in file order;
    dir: the dataset folder; kind: 'tgs' or 'synthetic'; fingerprint: what runs are tagged with (a
    ``-limit<N>`` suffix for a ``data.limit`` subset); reason: why this folder was chosen.
    """

    images: np.ndarray
    masks: np.ndarray
    ids: list[str]
    dir: Path
    kind: str
    fingerprint: str
    reason: str

    def __repr__(self) -> str:
        return (f"LoadedData({len(self.ids)} images from {self.dir}, kind={self.kind}, "
                f"fingerprint={self.fingerprint})")


def load_dataset(cfg, progress: bool | None = None) -> LoadedData:
    """The public entry point: the dataset ``cfg.data`` names (see ``resolve_data_dir``), read once."""
    d = cfg.data
    root, reason = resolve_data_dir(d.dir, synth_n=d.synth_n, synth_seed=d.synth_seed)
    limit = int(d.limit or 0)
    images, masks, ids = read_dataset(root, limit=limit, progress=progress)
    fp = fingerprint(root)
    if limit and len(ids) == limit:
        fp = f"{fp}-limit{limit}"  # a subset is other data: folds and evaluation must not mix them up
    return LoadedData(images=images, masks=masks, ids=list(ids), dir=Path(root), kind=dataset_kind(root),
                      fingerprint=fp, reason=reason)
