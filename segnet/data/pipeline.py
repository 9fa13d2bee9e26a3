"""From a config to arrays and ``tf.data`` batches.

* ``load_dataset(cfg)`` finds the data (``resolve_data_dir``), reads it once into memory and returns
  ``(images, masks, ids)`` (also available as attributes, with ``dir``, ``kind``, ``fingerprint``, ``reason``).
* ``to_network`` / ``from_network`` map 101x101 arrays to the network size and back (``pad``: reflect-pad,
  exact inverse by cropping; ``resize``: bilinear for images, nearest for masks).
* ``make_dataset`` builds the training (augmented, shuffled) or validation (plain, ordered) dataset.

Throughput: augmentation runs in one ``tf.numpy_function`` call per *batch* (albumentations per image
inside it, seeded per batch), in parallel map calls, so Python overhead is paid once per batch. TensorFlow
and albumentations are imported lazily: reading data does not pay for them.
"""

from __future__ import annotations

import os
import threading
from pathlib import Path

import numpy as np

from segnet import paths
from segnet.data.tgs import IMG_SIZE, dataset_kind, fingerprint, read_dataset, synthetic_params
from segnet.errors import ConfigError, DataError

# --------------------------------------------------------------------------------------------------
# Finding and loading the data
# --------------------------------------------------------------------------------------------------


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
    env = os.environ.get("TGS_DATA")
    if env:
        root = Path(env).expanduser()
        if not (root / "train.csv").is_file():
            raise DataError(f"TGS_DATA={env}: no train.csv there (not a Kaggle-layout dataset)")
        return root, "$TGS_DATA is set"
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


class LoadedData(tuple):
    """``(images, masks, ids)`` that also carries where the data came from.

    Unpacks as a 3-tuple; attributes: images, masks, ids, dir, kind ('tgs'|'synthetic'), fingerprint, reason.
    """

    def __new__(cls, images, masks, ids, *, dir: Path, kind: str, fingerprint: str, reason: str):  # noqa: A002
        self = super().__new__(cls, (images, masks, ids))
        self.dir = Path(dir)
        self.kind = kind
        self.fingerprint = fingerprint
        self.reason = reason
        return self

    @property
    def images(self) -> np.ndarray:
        return self[0]

    @property
    def masks(self) -> np.ndarray:
        return self[1]

    @property
    def ids(self) -> list[str]:
        return self[2]

    def __repr__(self) -> str:
        return (f"LoadedData({len(self.ids)} images from {self.dir}, kind={self.kind}, "
                f"fingerprint={self.fingerprint})")


def load_dataset(cfg, progress: bool | None = None) -> LoadedData:
    """The public entry point: images (N,101,101,1) f32 [0,1], masks (N,101,101,1) f32 {0,1}, ids."""
    d = cfg.data
    root, reason = resolve_data_dir(d.dir, synth_n=d.synth_n, synth_seed=d.synth_seed)
    limit = int(d.limit or 0)
    images, masks, ids = read_dataset(root, limit=limit, progress=progress)
    fp = fingerprint(root)
    if limit and len(ids) == limit:
        fp = f"{fp}-limit{limit}"  # a subset is other data: folds and evaluation must not mix them up
    return LoadedData(images, masks, ids, dir=root, kind=dataset_kind(root), fingerprint=fp, reason=reason)


# --------------------------------------------------------------------------------------------------
# Network size <-> 101x101
# --------------------------------------------------------------------------------------------------


def _as4d(x) -> np.ndarray:
    a = np.asarray(x, dtype=np.float32)
    if a.ndim == 3:
        a = a[..., None]
    if a.ndim != 4:
        raise ValueError(f"expected (N, H, W, C) arrays, got shape {a.shape}")
    return a


def _pad_amounts(size: int) -> tuple[int, int]:
    total = size - IMG_SIZE
    return total // 2, total - total // 2


def _resize_batch(a: np.ndarray, size: int, nearest: bool) -> np.ndarray:
    import cv2

    interp = cv2.INTER_NEAREST_EXACT if nearest else cv2.INTER_LINEAR
    n, _, _, c = a.shape
    out = np.empty((n, size, size, c), np.float32)
    for k in range(n):
        r = cv2.resize(a[k], (size, size), interpolation=interp)
        out[k] = r.reshape(size, size, c)
    return out


def to_network(x, size: int, mode: str = "pad", is_mask: bool = False) -> np.ndarray:
    """(N,101,101,C) -> (N,size,size,C) float32.

    ``pad``: reflect padding (no edge repeat), (size-101)//2 top/left and the rest bottom/right.
    ``resize``: bilinear (images) or nearest (masks, ``is_mask=True``), half-pixel centres.
    """
    a = _as4d(x)
    if a.shape[1:3] != (IMG_SIZE, IMG_SIZE):
        raise ValueError(f"to_network expects 101x101 inputs, got {a.shape[1]}x{a.shape[2]}")
    if mode == "pad":
        if size < IMG_SIZE:
            raise ConfigError(f"data.size={size} < 101 needs data.resize_mode=resize")
        if size == IMG_SIZE:
            return np.ascontiguousarray(a)
        lo, hi = _pad_amounts(size)
        if hi > IMG_SIZE - 1:
            raise ConfigError(f"data.size={size} is too large for reflect padding (at most {2 * IMG_SIZE - 1})")
        return np.pad(a, ((0, 0), (lo, hi), (lo, hi), (0, 0)), mode="reflect")
    if mode == "resize":
        return a.copy() if size == IMG_SIZE else _resize_batch(a, size, nearest=is_mask)
    raise ConfigError(f"data.resize_mode must be pad or resize, got {mode!r}")


def from_network(y, mode: str = "pad", is_mask: bool = False) -> np.ndarray:
    """(N,size,size,C) network outputs (logits, probabilities or masks) -> (N,101,101,C) float32.

    ``pad``: crops exactly what ``to_network`` added. ``resize``: bilinear back to 101 (nearest with
    ``is_mask=True``), so ``from_network(to_network(m, s, 'resize', True), 'resize', True) == m`` for s >= 101.
    """
    a = _as4d(y)
    size = a.shape[1]
    if a.shape[2] != size:
        raise ValueError(f"from_network expects square outputs, got {a.shape[1]}x{a.shape[2]}")
    if size == IMG_SIZE:
        return np.ascontiguousarray(a)
    if mode == "pad":
        if size < IMG_SIZE:
            raise ConfigError(f"pad mode cannot map a {size}x{size} output back to 101x101")
        lo, _ = _pad_amounts(size)
        return np.ascontiguousarray(a[:, lo : lo + IMG_SIZE, lo : lo + IMG_SIZE, :])
    if mode == "resize":
        return _resize_batch(a, IMG_SIZE, nearest=is_mask)
    raise ConfigError(f"data.resize_mode must be pad or resize, got {mode!r}")


# --------------------------------------------------------------------------------------------------
# Augmentation and tf.data
# --------------------------------------------------------------------------------------------------


def build_augmentation(aug):
    """The albumentations pipeline configured by ``cfg.data.augment`` (None when disabled or all p=0)."""
    if not aug.enabled:
        return None
    os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")  # no network check on import
    import albumentations as A
    import cv2

    transforms = []
    if aug.hflip > 0:
        transforms.append(A.HorizontalFlip(p=float(aug.hflip)))
    if aug.affine > 0:
        transforms.append(
            A.Affine(
                translate_percent=(-float(aug.shift), float(aug.shift)),
                scale=(1.0 - float(aug.scale), 1.0 + float(aug.scale)),
                rotate=(-float(aug.rotate), float(aug.rotate)),
                interpolation=cv2.INTER_LINEAR,
                mask_interpolation=cv2.INTER_NEAREST,
                border_mode=cv2.BORDER_REFLECT_101,
                p=float(aug.affine),
            )
        )
    if aug.brightness_contrast > 0 and (aug.brightness > 0 or aug.contrast > 0):
        transforms.append(
            A.RandomBrightnessContrast(
                brightness_limit=float(aug.brightness),
                contrast_limit=float(aug.contrast),
                p=float(aug.brightness_contrast),
            )
        )
    return A.Compose(transforms) if transforms else None


class BatchAugmenter:
    """Augments a batch of indices into the in-memory arrays, then maps it to the network size.

    One call per batch; each worker thread keeps its own albumentations pipeline, reseeded per batch
    from the batch's seed, so results do not depend on thread scheduling.
    """

    def __init__(self, images: np.ndarray, masks: np.ndarray, aug_cfg, size: int, mode: str):
        self.images = np.ascontiguousarray(_as4d(images))
        self.masks = np.ascontiguousarray((_as4d(masks)[..., 0] > 0.5).astype(np.uint8))
        self.aug_cfg = aug_cfg
        self.size = size
        self.mode = mode
        self._local = threading.local()

    def _pipeline(self):
        if self.aug_cfg is None:  # augmentation off: gather and resize only
            return None
        if not hasattr(self._local, "compose"):
            self._local.compose = build_augmentation(self.aug_cfg)
        return self._local.compose

    def __call__(self, idx: np.ndarray, seed) -> tuple[np.ndarray, np.ndarray]:
        idx = np.asarray(idx, dtype=np.int64)
        x = self.images[idx]
        y = self.masks[idx].astype(np.float32)[..., None]
        compose = self._pipeline()
        if compose is not None:
            compose.set_random_seed(int(np.uint32(np.int64(seed) & 0xFFFFFFFF)))
            for k, i in enumerate(idx):
                r = compose(image=self.images[i], mask=self.masks[i])
                x[k] = r["image"].reshape(IMG_SIZE, IMG_SIZE, 1)
                y[k, ..., 0] = r["mask"].reshape(IMG_SIZE, IMG_SIZE)
            np.clip(x, 0.0, 1.0, out=x)
        if self.mode == "pad":  # padded in the graph (tf.pad), outside the GIL
            return x, y
        return to_network(x, self.size, self.mode), to_network(y, self.size, self.mode, is_mask=True)


def epoch_rng(seed: int, epoch: int) -> np.random.Generator:
    """The random stream of one training epoch: a function of (seed, epoch) alone."""
    return np.random.default_rng([int(seed) & 0xFFFFFFFF, int(epoch)])


def make_dataset(images: np.ndarray, masks: np.ndarray, cfg, training: bool, batch_size: int | None = None,
                 epoch: int = 0):
    """A ``tf.data.Dataset`` of (image, mask) float32 batches (B, size, size, 1): one pass is one epoch.

    training: the order and the augmentation (``cfg.data.augment``) of epoch ``epoch``, drawn from
    (``cfg.train.seed``, ``epoch``) alone, so every epoch differs, every run repeats the same sequence,
    and a run resumed at epoch k sees exactly what the uninterrupted run saw; last partial batch
    dropped. Otherwise: no augmentation, no shuffle, every image once, in order.
    """
    import tensorflow as tf

    size, mode = int(cfg.data.size), cfg.data.resize_mode
    bs = int(batch_size or cfg.train.batch_size)
    n = len(images)
    if n == 0:
        raise DataError("make_dataset: no images")
    if len(masks) != n:
        raise ValueError(f"{n} images but {len(masks)} masks")
    autotune = tf.data.AUTOTUNE
    spec_shape = (None, size, size, 1)

    if not training:
        x = to_network(images, size, mode)
        y = to_network((_as4d(masks) > 0.5).astype(np.float32), size, mode, is_mask=True)
        return tf.data.Dataset.from_tensor_slices((x, y)).batch(bs).prefetch(autotune)

    to_network(np.zeros((1, IMG_SIZE, IMG_SIZE, 1), np.float32), size, mode)  # size/mode errors now, not in a worker
    aug = cfg.data.augment if cfg.data.augment.enabled else None
    augment = BatchAugmenter(images, masks, aug, size, mode)
    rng = epoch_rng(cfg.train.seed, epoch)
    order = rng.permutation(n)
    n_batches = n // bs if n >= bs else 1
    order = order[: n_batches * bs] if n >= bs else order
    batch_seeds = rng.integers(0, 2**31 - 1, size=n_batches, dtype=np.int64)
    ds = tf.data.Dataset.from_tensor_slices((order.reshape(n_batches, -1), batch_seeds))

    lo, hi = _pad_amounts(size)
    pad = [[0, 0], [lo, hi], [lo, hi], [0, 0]]

    def fn(idx, s):
        x, y = tf.numpy_function(augment, [idx, s], [tf.float32, tf.float32], stateful=False)
        if mode == "pad" and size != IMG_SIZE:
            x, y = tf.pad(x, pad, mode="REFLECT"), tf.pad(y, pad, mode="REFLECT")
        x.set_shape(spec_shape)
        y.set_shape(spec_shape)
        return x, y

    ds = ds.map(fn, num_parallel_calls=autotune, deterministic=True)
    return ds.prefetch(autotune)


def pipeline_throughput(images: np.ndarray, masks: np.ndarray, cfg, epochs: int = 3) -> float:
    """Images per second of the training pipeline alone (no model), after one warm-up epoch."""
    import time

    ds = make_dataset(images, masks, cfg, training=True)
    for _ in ds:  # warm-up: graph tracing, thread pools
        pass
    t0 = time.perf_counter()
    count = 0
    for _ in range(epochs):
        for x, _y in ds:
            count += int(x.shape[0])
    return count / (time.perf_counter() - t0)
