"""to_network/from_network, tf.data batches, augmentation alignment, and finding the data (discovery)."""

from __future__ import annotations

import types

import numpy as np
import pytest

from segnet import paths
from segnet.data import pipeline
from segnet.data.discovery import LoadedData, load_dataset, resolve_data_dir
from segnet.data.pipeline import BatchAugmenter, from_network, make_dataset, to_network
from segnet.errors import DataError


def make_cfg(size=112, mode="pad", batch=8, seed=0, data_dir=None, **aug):
    a = dict(enabled=True, hflip=0.5, affine=0.5, shift=0.0625, scale=0.1, rotate=10.0,
             brightness_contrast=0.5, brightness=0.1, contrast=0.1)
    a.update(aug)
    data = types.SimpleNamespace(dir=data_dir, size=size, resize_mode=mode, n_folds=4, fold=0, fold_seed=0,
                                 limit=0, synth_n=20, synth_seed=0, augment=types.SimpleNamespace(**a))
    return types.SimpleNamespace(data=data, train=types.SimpleNamespace(batch_size=batch, seed=seed))


@pytest.fixture(scope="module")
def arrays(tiny_synth):
    from segnet.data.tgs import read_dataset

    return read_dataset(tiny_synth)


@pytest.mark.parametrize("size", [101, 112, 128, 131])
def test_pad_round_trip_exact(arrays, size):
    x, m, _ = arrays
    net = to_network(x, size, "pad")
    assert net.shape == (48, size, size, 1) and net.dtype == np.float32
    lo = (size - 101) // 2
    assert np.array_equal(net[:, lo : lo + 101, lo : lo + 101], x)
    assert np.array_equal(net[:, lo - 1 if lo else 0, lo:lo + 101], x[:, 1 if lo else 0])  # reflect, no edge copy
    assert np.array_equal(from_network(net, "pad"), x)
    assert np.array_equal(from_network(to_network(m, size, "pad", is_mask=True), "pad", is_mask=True), m)


@pytest.mark.parametrize("size", [101, 112, 128])
def test_resize_round_trip_exact_for_masks(arrays, size):
    x, m, _ = arrays
    net = to_network(m, size, "resize", is_mask=True)
    assert net.shape == (48, size, size, 1) and set(np.unique(net)) <= {0.0, 1.0}
    assert np.array_equal(from_network(net, "resize", is_mask=True), m)
    img = from_network(to_network(x, size, "resize"), "resize")
    assert img.shape == x.shape and np.abs(img - x).mean() < 0.03


def test_resize_down_to_small_network(arrays):
    x, _, _ = arrays
    net = to_network(x, 64, "resize")
    assert net.shape == (48, 64, 64, 1) and from_network(net, "resize").shape == (48, 101, 101, 1)


def test_training_batches_shapes_dtypes_and_determinism(arrays):
    x, m, _ = arrays
    cfg = make_cfg(batch=8)
    ds = make_dataset(x, m, cfg, training=True)
    batches = [(a.numpy(), b.numpy()) for a, b in ds]
    assert len(batches) == 6
    for a, b in batches:
        assert a.shape == b.shape == (8, 112, 112, 1) and a.dtype == b.dtype == np.float32
        assert 0 <= a.min() and a.max() <= 1 and set(np.unique(b)) <= {0.0, 1.0}
    again = [(a.numpy(), b.numpy()) for a, b in make_dataset(x, m, cfg, training=True)]
    assert all(np.array_equal(a, c) and np.array_equal(b, d) for (a, b), (c, d) in zip(batches, again, strict=True))
    epoch2 = [a.numpy() for a, _ in make_dataset(x, m, cfg, training=True, epoch=1)]
    assert not all(np.array_equal(a, c) for (a, _), c in zip(batches, epoch2, strict=True))
    # Epoch k is a function of (seed, k) alone: built fresh (as a resumed run does), it is the same.
    again2 = [a.numpy() for a, _ in make_dataset(x, m, cfg, training=True, epoch=1)]
    assert all(np.array_equal(a, c) for a, c in zip(epoch2, again2, strict=True))
    other_seed = [a.numpy() for a, _ in make_dataset(x, m, make_cfg(batch=8, seed=7), training=True, epoch=1)]
    assert not all(np.array_equal(a, c) for a, c in zip(epoch2, other_seed, strict=True))


def test_validation_dataset_plain_ordered_once(arrays):
    x, m, _ = arrays
    cfg = make_cfg(size=128, batch=10)
    out = list(make_dataset(x, m, cfg, training=False))
    assert [a.shape[0] for a, _ in out] == [10, 10, 10, 10, 8]
    xs = np.concatenate([a.numpy() for a, _ in out])
    ms = np.concatenate([b.numpy() for _, b in out])
    assert np.array_equal(xs, to_network(x, 128, "pad")) and np.array_equal(from_network(ms, "pad"), m)


def test_augmentation_keeps_image_and_mask_aligned():
    """mask = image > 0.5 before augmentation; after flips/affine (brightness off) it still is."""
    rng = np.random.default_rng(0)
    import cv2

    coarse = rng.random((32, 7, 7)).astype(np.float32)
    img = np.stack([cv2.resize(c, (101, 101), interpolation=cv2.INTER_CUBIC) for c in coarse])[..., None]
    img = np.clip(img, 0, 1)
    mask = (img > 0.5).astype(np.float32)
    cfg = make_cfg(size=101, hflip=0.5, affine=1.0, shift=0.1, scale=0.15, rotate=15.0, brightness_contrast=0.0)
    aug = BatchAugmenter(img, mask, cfg.data.augment, 101, "pad")
    xa, ma = aug(np.arange(32), 123)
    assert not np.array_equal(xa, img)  # something happened
    agree = ((xa > 0.5) == (ma > 0.5)).mean()
    assert agree > 0.98, agree
    # The check can fail: flipping only the image breaks it.
    assert (((xa[:, :, ::-1] > 0.5) == (ma > 0.5)).mean()) < 0.9


def test_pipeline_uses_every_image_once_per_epoch_without_aug(arrays):
    x, m, _ = arrays
    cfg = make_cfg(size=101, batch=16, enabled=False)
    seen = np.concatenate([a.numpy() for a, _ in make_dataset(x, m, cfg, training=True)])
    assert seen.shape[0] == 48
    keys = sorted(float(v.sum()) for v in seen)
    assert np.allclose(keys, sorted(float(v.sum()) for v in x))


def test_resolve_data_dir_order(tiny_synth, tmp_path, monkeypatch):
    monkeypatch.setattr(paths, "TGS_DIR", tmp_path / "tgs")
    monkeypatch.setattr(paths, "SYNTHETIC_DIR", tmp_path / "synthetic")
    monkeypatch.delenv("TGS_DATA", raising=False)
    # Nothing found: synthetic data is generated with the requested parameters.
    root, why = resolve_data_dir(None, synth_n=12, synth_seed=5)
    assert root == tmp_path / "synthetic" and "generated" in why and len(list(root.glob("train/images/*"))) == 12
    root, why = resolve_data_dir(None, synth_n=12, synth_seed=5)
    assert "generated" not in why
    # data/tgs beats synthetic, $TGS_DATA beats data/tgs, an explicit dir beats everything.
    import shutil

    shutil.copytree(tiny_synth, tmp_path / "tgs")
    assert resolve_data_dir(None)[0] == tmp_path / "tgs"
    monkeypatch.setenv("TGS_DATA", str(tiny_synth))
    assert resolve_data_dir(None) == (tiny_synth, "$TGS_DATA is set")
    assert resolve_data_dir(str(tmp_path / "synthetic"))[0] == tmp_path / "synthetic"
    with pytest.raises(DataError, match="nowhere"):
        resolve_data_dir(str(tmp_path / "nowhere"))
    monkeypatch.setenv("TGS_DATA", str(tmp_path / "empty"))
    with pytest.raises(DataError, match="TGS_DATA"):
        resolve_data_dir(None)


def test_one_tgs_data_reader(tiny_synth, tmp_path, monkeypatch):
    """$TGS_DATA is read in one place: strict for training; unusable, ignored by `make data` and tests."""
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.delenv("TGS_DATA", raising=False)
    assert paths.tgs_data_env() is None and paths.tgs_data_env(strict=True) is None
    monkeypatch.setattr(paths, "SHARED_TGS", tmp_path / "shared")
    assert paths.real_tgs_dir() is None
    import shutil

    shutil.copytree(tiny_synth, tmp_path / "real")
    monkeypatch.setenv("TGS_DATA", "~/real")
    assert paths.tgs_data_env(strict=True) == paths.real_tgs_dir() == tmp_path / "real"
    monkeypatch.setenv("TGS_DATA", str(tmp_path / "empty"))
    assert paths.tgs_data_env() is None and paths.real_tgs_dir() is None
    with pytest.raises(DataError, match=r"^TGS_DATA=.*empty: no train.csv"):
        paths.tgs_data_env(strict=True)


def test_load_dataset(tiny_synth):
    cfg = make_cfg(data_dir=str(tiny_synth))
    data = load_dataset(cfg)
    assert isinstance(data, LoadedData) and not isinstance(data, tuple)  # attributes, no unpacking
    assert data.images.shape == data.masks.shape == (48, 101, 101, 1) and len(data.ids) == 48
    assert data.kind == "synthetic" and data.dir == tiny_synth and "48 images" in repr(data)
    cfg.data.limit = 10
    small = load_dataset(cfg)
    assert len(small.ids) == 10 and small.fingerprint != data.fingerprint


def test_pipeline_throughput_is_reported(arrays):
    """A rate comes back, over whole epochs or a number of batches spanning two epochs; how fast is the
    benchmark's business (``segnet bench`` reports it), not a test's."""
    x, m, _ = arrays
    for kw in ({"epochs": 1}, {"batches": 4}):  # 48 images, batch 16: 3 batches an epoch
        rate = pipeline.pipeline_throughput(x, m, make_cfg(batch=16), **kw)
        assert np.isfinite(rate) and rate > 0, kw


def test_synthetic_data_cannot_be_generated(tmp_path, monkeypatch):
    """data/ unwritable (here: a file where the folder should be): one DataError naming it, nothing left."""
    (tmp_path / "data").write_text("not a folder")
    monkeypatch.setattr(paths, "TGS_DIR", tmp_path / "data/tgs")
    monkeypatch.setattr(paths, "SYNTHETIC_DIR", tmp_path / "data/synthetic")
    monkeypatch.delenv("TGS_DATA", raising=False)
    with pytest.raises(DataError) as e:
        resolve_data_dir(None, synth_n=8, synth_seed=0)
    assert str(tmp_path / "data/synthetic") in str(e.value) and "\n" not in str(e.value)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["data"]


def test_load_dataset_with_zero_images(empty_dataset):
    d = empty_dataset
    with pytest.raises(DataError, match="no training images"):
        load_dataset(make_cfg(data_dir=str(d)))
