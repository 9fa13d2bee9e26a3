"""Kaggle submission from a trained run: ``id,rle_mask``, one row per image, RLE as the competition reads it.

A `segnet cv` run predicts with its fold ensemble (the mean of the fold models' logits, the out-of-fold
threshold), a run trained with sgdr cycles with its snapshot ensemble (the mean of its snapshots' logits);
any other run, a cv fold's included, with its own model.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pandas as pd

from segnet import atomic
from segnet.atomic import atomic_write
from segnet.errors import SegnetError


def predict_masks(model, cfg, images: np.ndarray, threshold: float, tta: bool, progress: bool = True) -> np.ndarray:
    """Binary 101x101 masks for (N,101,101,1) images, in batches with a progress bar (segnet.inference)."""
    from segnet.inference import Predictor

    return Predictor.from_config(model, cfg, threshold, tta=tta).masks(images, progress=progress)


def _check_writable_out(out: Path) -> None:
    """The submission's folder exists (or can be made) and takes a file."""
    if out.is_dir():
        raise SegnetError(f"--out {out} is a folder; give a file name, e.g. {out / 'submission.csv'}")
    why = atomic.unwritable(out.parent)
    if why:
        raise SegnetError(f"--out {out}: cannot write there ({why})")


def predict_run(run_id: str, images_dir: str | Path, out: str | Path, tta: bool | None = None) -> Path:
    from segnet.data.rle import rle_encode
    from segnet.data.tgs import read_images
    from segnet.runs import load_run

    images_dir, out = Path(images_dir), Path(out)
    if not images_dir.is_dir():
        raise SegnetError(f"image folder not found: {images_dir}")
    _check_writable_out(out)  # before minutes of prediction, not after
    tr = load_run(run_id)
    images, ids = read_images(images_dir)
    if len(ids) == 0:
        raise SegnetError(f"no .png images in {images_dir}")
    tta = tr.cfg.eval.tta if tta is None else tta
    t0 = time.perf_counter()
    masks = tr.predictor(tta).masks(images, progress=True)
    seconds = time.perf_counter() - t0
    df = pd.DataFrame({"id": ids, "rle_mask": [rle_encode(m) for m in masks]})
    out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(out, lambda tmp: df.to_csv(tmp, index=False))
    print(f"predict: {len(ids)} images in {seconds:.1f}s ({len(ids) / seconds:.0f} images/s, "
          f"{f'{tr.ensemble} ensemble of {len(tr.members)} models, ' if tr.members else ''}"
          f"threshold {tr.threshold:.2f}, flip TTA {'on' if tta else 'off'}); "
          f"{int((df.rle_mask != '').sum())} with salt", flush=True)
    print(f"submission: {out}", flush=True)
    return out
