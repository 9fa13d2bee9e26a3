"""From 101x101 arrays to ``tf.data`` batches (finding and reading the data: ``segnet.data.discovery``).

* ``to_network`` / ``from_network`` map 101x101 arrays to the network size and back (``pad``: reflect-pad,
  exact inverse by cropping; ``resize``: bilinear for images, nearest for masks).
* ``make_dataset`` builds the training (augmented, shuffled) or validation (plain, ordered) dataset.

Throughput: augmentation runs in one ``tf.numpy_function`` call per *batch* (albumentations per image
inside it, seeded per batch), in parallel map calls, so Python overhead is paid once per batch. TensorFlow
and albumentations are imported lazily: mapping arrays does not pay for them.
"""

from __future__ import annotations

import os
import threading

import numpy as np

from segnet.data.tgs import IMG_SIZE
from segnet.errors import ConfigError, DataError

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
    # A multi-worker training (train.strategy: multi_worker) shards by data: every worker builds each batch of
    # the epoch (same order, same augmentation) and keeps its share; there are no files to shard by.
    options = tf.data.Options()
    options.experimental_distribute.auto_shard_policy = tf.data.experimental.AutoShardPolicy.DATA
    return ds.with_options(options).prefetch(autotune)


def pipeline_throughput(images: np.ndarray, masks: np.ndarray, cfg, epochs: int = 3,
                        batches: int | None = None) -> float:
    """Images per second of the training pipeline alone (no model), consumed the way training does.

    Epoch 0 is iterated once untimed (graph tracing, thread pools); then epochs 1, 2, ... are each built
    with ``make_dataset(..., epoch=k)``, as training builds them (building included in the time), and
    iterated: ``epochs`` whole epochs, or, with ``batches``, that many batches (the benchmark's sample
    per round; as many epochs as needed).
    """
    import time

    for _ in make_dataset(images, masks, cfg, training=True, epoch=0):
        pass
    count = n_batches = 0
    epoch = 1
    t0 = time.perf_counter()
    while (n_batches < batches) if batches is not None else (epoch <= epochs):
        for x, _y in make_dataset(images, masks, cfg, training=True, epoch=epoch):
            count += int(x.shape[0])
            n_batches += 1
            if batches is not None and n_batches >= batches:
                break
        epoch += 1
    return count / (time.perf_counter() - t0)
