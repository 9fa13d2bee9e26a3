"""The Kaggle layout reader: every validation error names its culprit; real-data counts."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from segnet import paths
from segnet.data.tgs import dataset_kind, fingerprint, read_dataset, read_images, validate, write_dataset
from segnet.errors import DataError


@pytest.fixture
def ds(tiny_synth, tmp_path) -> Path:
    out = tmp_path / "ds"
    shutil.copytree(tiny_synth, out)
    return out


def _ids(root: Path) -> list[str]:
    return pd.read_csv(root / "train.csv", dtype=str, keep_default_na=False)["id"].tolist()


def _salt_id(root: Path) -> str:
    df = pd.read_csv(root / "train.csv", dtype=str, keep_default_na=False)
    return df[df["rle_mask"] != ""]["id"].iloc[0]


def _edit_csv(path: Path, fn) -> None:
    df = pd.read_csv(path, dtype=str, keep_default_na=False)
    fn(df).to_csv(path, index=False)


# Each breaker damages one thing and returns what the error message must name.
def missing_image(root):
    i = _ids(root)[3]
    (root / "train/images" / f"{i}.png").unlink()
    return i


def missing_mask(root):
    i = _ids(root)[4]
    (root / "train/masks" / f"{i}.png").unlink()
    return i


def extra_image(root):
    shutil.copy(root / "train/images" / f"{_ids(root)[0]}.png", root / "train/images/ffffffffff.png")
    return "ffffffffff.png"


def extra_mask(root):
    shutil.copy(root / "train/masks" / f"{_ids(root)[0]}.png", root / "train/masks/eeeeeeeeee.png")
    return "eeeeeeeeee.png"


def extra_non_png(root):
    (root / "train/images/notes.txt").write_text("hello")
    return "notes.txt"


def truncated_image(root):
    i = _ids(root)[5]
    p = root / "train/images" / f"{i}.png"
    p.write_bytes(p.read_bytes()[:200])
    return f"{i}.png"


def truncated_mask(root):
    i = _salt_id(root)
    p = root / "train/masks" / f"{i}.png"
    p.write_bytes(p.read_bytes()[:60])
    return f"{i}.png"


def not_a_png(root):
    i = _ids(root)[6]
    (root / "train/images" / f"{i}.png").write_bytes(b"GIF89a not a png at all")
    return f"{i}.png"


def wrong_size(root):
    i = _ids(root)[7]
    Image.fromarray(np.zeros((64, 64), np.uint8)).save(root / "train/images" / f"{i}.png")
    return f"{i}.png"


def wrong_size_mask(root):
    i = _ids(root)[8]
    Image.fromarray(np.zeros((101, 102), np.uint8)).save(root / "train/masks" / f"{i}.png")
    return f"{i}.png"


def malformed_rle(root):
    i = _salt_id(root)
    _edit_csv(root / "train.csv", lambda df: df.assign(rle_mask=np.where(df["id"] == i, "5 3 7", df["rle_mask"])))
    return i


def rle_disagrees(root):
    i = _salt_id(root)
    _edit_csv(root / "train.csv", lambda df: df.assign(rle_mask=np.where(df["id"] == i, "1 1", df["rle_mask"])))
    return i


def mask_pixel_changed(root):
    i = _ids(root)[9]
    p = root / "train/masks" / f"{i}.png"
    a = np.array(Image.open(p))
    a[50, 50] = 255 - a[50, 50]
    Image.fromarray(a).save(p)
    return i


def depth_missing(root):
    i = _ids(root)[10]
    _edit_csv(root / "depths.csv", lambda df: df[df["id"] != i])
    return i


def csv_id_without_files(root):
    _edit_csv(root / "train.csv", lambda df: pd.concat([df, pd.DataFrame({"id": ["0123456789"], "rle_mask": [""]})]))
    return "0123456789"


BREAKERS = [missing_image, missing_mask, extra_image, extra_mask, extra_non_png, truncated_image, truncated_mask,
            not_a_png, wrong_size, wrong_size_mask, malformed_rle, rle_disagrees, mask_pixel_changed, depth_missing,
            csv_id_without_files]


def test_tiny_synth_is_valid(tiny_synth):
    s = validate(tiny_synth)
    assert (s.n_images, s.n_masks, s.n_test, s.kind) == (48, 48, 4, "synthetic")
    assert 0 < s.n_empty < 48 and 51 <= s.depth_min <= s.depth_max <= 959


@pytest.mark.parametrize("breaker", BREAKERS, ids=lambda f: f.__name__)
def test_validation_error_names_the_culprit(ds, breaker):
    culprit = breaker(ds)
    with pytest.raises(DataError) as e:
        validate(ds, progress=False)
    msg = str(e.value)
    assert culprit in msg, msg
    assert "\n" not in msg


@pytest.mark.parametrize("breaker", [truncated_image, rle_disagrees, depth_missing], ids=lambda f: f.__name__)
def test_read_dataset_runs_the_same_checks(ds, breaker):
    culprit = breaker(ds)
    with pytest.raises(DataError, match=culprit):
        read_dataset(ds)


def test_read_dataset_arrays(tiny_synth):
    x, m, ids = read_dataset(tiny_synth)
    assert x.shape == m.shape == (48, 101, 101, 1)
    assert x.dtype == m.dtype == np.float32
    assert 0.0 <= x.min() and x.max() <= 1.0 and set(np.unique(m)) <= {0.0, 1.0}
    assert ids == sorted(ids) and len(set(ids)) == 48
    x5, m5, ids5 = read_dataset(tiny_synth, limit=5)
    assert ids5 == ids[:5] and np.array_equal(x5, x[:5]) and np.array_equal(m5, m[:5])


def test_rgb_and_16bit_pngs_decode_like_kaggle(tmp_path):
    """Real images are RGB with R==G==B, non-empty masks 16-bit 0/65535: one channel, {0,1}."""
    rng = np.random.default_rng(0)
    img = rng.integers(0, 256, (101, 101), dtype=np.uint8)
    mask = (rng.random((101, 101)) < 0.3).astype(np.uint8)
    write_dataset(tmp_path / "d", ["aaaaaaaaaa"], img[None], mask[None], [100])
    Image.fromarray(np.repeat(img[..., None], 3, axis=-1), "RGB").save(tmp_path / "d/train/images/aaaaaaaaaa.png")
    Image.fromarray(mask.astype(np.uint16) * 65535).save(tmp_path / "d/train/masks/aaaaaaaaaa.png")
    assert Image.open(tmp_path / "d/train/masks/aaaaaaaaaa.png").mode.startswith("I")
    x, m, _ = read_dataset(tmp_path / "d")
    assert np.array_equal(x[0, ..., 0], img.astype(np.float32) / 255)
    assert np.array_equal(m[0, ..., 0], mask.astype(np.float32))
    assert dataset_kind(tmp_path / "d") == "tgs"


def test_read_images_and_fingerprint(tiny_synth, ds):
    x, ids = read_images(tiny_synth / "test/images")
    assert x.shape == (4, 101, 101, 1) and x.dtype == np.float32 and len(ids) == 4
    assert fingerprint(tiny_synth) == fingerprint(ds)
    mask_pixel_changed(ds)  # same size? PNG size changes, and so does the fingerprint
    (ds / "train.csv").write_text((ds / "train.csv").read_text() + "\n")
    assert fingerprint(tiny_synth) != fingerprint(ds)


def test_validate_real_data():
    root = paths.real_tgs_dir()
    if root is None:
        pytest.skip("real TGS data not found ($TGS_DATA or ../shared/datasets/tgs-salt)")
    s = validate(root, progress=False)
    assert (s.n_images, s.n_masks, s.n_empty) == (3500, 3500, 1367)
    assert s.kind == "tgs" and 51 <= s.depth_min and s.depth_max == 959
    assert 0.23 < s.mean_coverage < 0.27
