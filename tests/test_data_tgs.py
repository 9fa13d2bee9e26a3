"""The Kaggle layout reader: every validation error names its culprit; real-data counts."""

from __future__ import annotations

import os
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


def _set_depth(root, value):
    i = _ids(root)[11]
    _edit_csv(root / "depths.csv", lambda df: df.assign(z=np.where(df["id"] == i, value, df["z"])))
    return i


def depth_inf(root):
    return _set_depth(root, "inf")


def depth_nan(root):
    return _set_depth(root, "nan")


def depth_empty(root):
    return _set_depth(root, "")


def depth_not_integer(root):
    return _set_depth(root, "12.5")


def csv_ids_differ_by_whitespace(root):
    """'abc' and 'abc ' in train.csv: one id twice (ids ignore surrounding whitespace)."""
    i = _ids(root)[12]
    _edit_csv(root / "train.csv", lambda df: pd.concat([df, pd.DataFrame({"id": [i + " "], "rle_mask": [""]})]))
    return f"'{i} '"


def files_differ_by_whitespace(root):
    i = _ids(root)[13]
    shutil.copy(root / "train/images" / f"{i}.png", root / "train/images" / f"{i} .png")
    return f"'{i} .png'"


def csv_empty_id(root):
    _edit_csv(root / "train.csv", lambda df: pd.concat([df, pd.DataFrame({"id": ["  "], "rle_mask": [""]})]))
    return "empty id"


def huge_rle_value(root):
    i = _salt_id(root)
    _edit_csv(root / "train.csv",
              lambda df: df.assign(rle_mask=np.where(df["id"] == i, "99999999999999999999 3", df["rle_mask"])))
    return i


def header_only(root):
    """No rows: 'ok' for zero images was the bug; training then crashed."""
    (root / "train.csv").write_text("id,rle_mask\n")
    for sub in ("train/images", "train/masks"):
        shutil.rmtree(root / sub)
        (root / sub).mkdir()
    return "no training images"


BREAKERS = [missing_image, missing_mask, extra_image, extra_mask, extra_non_png, truncated_image, truncated_mask,
            not_a_png, wrong_size, wrong_size_mask, malformed_rle, rle_disagrees, mask_pixel_changed, depth_missing,
            csv_id_without_files, depth_inf, depth_nan, depth_empty, depth_not_integer, csv_ids_differ_by_whitespace,
            files_differ_by_whitespace, csv_empty_id, huge_rle_value, header_only]


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


def test_non_finite_depth_names_file_and_id(ds):
    i = depth_inf(ds)
    with pytest.raises(DataError) as e:
        validate(ds, progress=False)
    msg = str(e.value)
    assert str(ds / "depths.csv") in msg and i in msg and "non-finite" in msg


def test_whitespace_twins_name_both_ids(ds):
    i = _ids(ds)[12]
    csv_ids_differ_by_whitespace(ds)
    with pytest.raises(DataError) as e:
        validate(ds, progress=False)
    assert f"'{i}'" in str(e.value) and f"'{i} '" in str(e.value) and "train.csv" in str(e.value)


def test_whitespace_around_ids_is_ignored_consistently(ds):
    """One id, written ' abc' in train.csv, 'abc ' in depths.csv and 'abc .png' on disk, is still one id."""
    i = _ids(ds)[14]
    _edit_csv(ds / "train.csv", lambda df: df.assign(id=np.where(df["id"] == i, f" {i}", df["id"])))
    _edit_csv(ds / "depths.csv", lambda df: df.assign(id=np.where(df["id"] == i, f"{i} ", df["id"])))
    (ds / "train/images" / f"{i}.png").rename(ds / "train/images" / f"{i} .png")
    assert validate(ds, progress=False).n_images == 48
    _, _, ids = read_dataset(ds)
    assert i in ids and len(ids) == 48


@pytest.mark.parametrize("breaker", [truncated_image, rle_disagrees, depth_missing, header_only, depth_inf],
                         ids=lambda f: f.__name__)
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


def _one_id_dataset(root: Path, mask: np.ndarray) -> Path:
    rng = np.random.default_rng(1)
    img = rng.integers(0, 256, (101, 101), dtype=np.uint8)
    return write_dataset(root, ["bbbbbbbbbb"], img[None], mask[None], [100])


@pytest.mark.parametrize("mode", ["RGBA", "LA"])
def test_alpha_channel_is_not_salt(tmp_path, mode):
    """An opaque mask (alpha 255 everywhere) with colour 0 in the top half: salt is the bottom half only."""
    from segnet.data.tgs import decode_mask

    salt = np.zeros((101, 101), np.uint8)
    salt[50:] = 1
    d = _one_id_dataset(tmp_path / "d", salt)
    p = d / "train/masks/bbbbbbbbbb.png"
    if mode == "RGBA":
        a = np.zeros((101, 101, 4), np.uint8)
        a[50:, :, :3] = (255, 255, 255)
    else:
        a = np.zeros((101, 101, 2), np.uint8)
        a[50:, :, 0] = 255
    a[..., -1] = 255
    Image.fromarray(a, mode).save(p)
    assert Image.open(p).mode == mode
    assert np.array_equal(decode_mask(p), salt)
    validate(d, progress=False)  # train.csv (bottom half) agrees with the mask
    _, m, _ = read_dataset(d)
    assert np.array_equal(m[0, ..., 0], salt.astype(np.float32))


def test_coloured_and_16bit_masks_still_count_non_zero_values(tmp_path):
    """Any non-zero colour channel is salt; 16-bit greyscale 0/65535 (the real data) still works."""
    from segnet.data.tgs import decode_mask

    salt = np.zeros((101, 101), np.uint8)
    salt[:, 60:] = 1
    d = _one_id_dataset(tmp_path / "d", salt)
    p = d / "train/masks/bbbbbbbbbb.png"
    a = np.zeros((101, 101, 4), np.uint8)
    a[:, 60:, 2] = 1  # blue only, value 1
    a[:, :60, 3] = 255  # alpha does not matter either way
    Image.fromarray(a, "RGBA").save(p)
    assert np.array_equal(decode_mask(p), salt)
    Image.fromarray(salt.astype(np.uint16) * 65535).save(p)
    assert np.array_equal(decode_mask(p), salt)


def test_image_alpha_channel_is_ignored(tmp_path):
    from segnet.data.tgs import decode_image

    d = _one_id_dataset(tmp_path / "d", np.zeros((101, 101), np.uint8))
    p = d / "train/images/bbbbbbbbbb.png"
    grey = np.random.default_rng(2).integers(0, 256, (101, 101), dtype=np.uint8)
    la = np.stack([grey, np.full_like(grey, 255)], axis=-1)
    Image.fromarray(la, "LA").save(p)
    assert np.array_equal(decode_image(p), grey)


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


# --------------------------------------------------------------------------------------------------
# Writing: an unwritable or full target fails with one line and leaves nothing half-written
# --------------------------------------------------------------------------------------------------


def _write_tiny(out: Path) -> Path:
    z = np.zeros((3, 101, 101), np.uint8)
    return write_dataset(out, ["a0", "a1", "a2"], z, z, [1, 2, 3])


def test_writer_target_under_a_file(tmp_path):
    (tmp_path / "afile").write_text("x")
    out = tmp_path / "afile" / "ds"
    with pytest.raises(DataError) as e:
        _write_tiny(out)
    assert str(out) in str(e.value) and "\n" not in str(e.value)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["afile"]


def test_writer_unwritable_parent(tmp_path, monkeypatch):
    """PermissionError creating the temporary folder (chmod does not stop root, so it is simulated)."""
    real = Path.mkdir

    def deny(self, *a, **k):
        if ".tmp-" in self.as_posix():
            raise PermissionError(13, "Permission denied", str(self))
        return real(self, *a, **k)

    monkeypatch.setattr(Path, "mkdir", deny)
    with pytest.raises(DataError, match=r"ds: cannot create the dataset folder \(Permission denied"):
        _write_tiny(tmp_path / "ds")
    assert list(tmp_path.iterdir()) == []


@pytest.mark.skipif(not hasattr(os, "geteuid") or os.geteuid() == 0, reason="root ignores file permissions")
def test_writer_read_only_parent(tmp_path):
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o555)
    try:
        with pytest.raises(DataError, match="Permission denied"):
            _write_tiny(ro / "ds")
        assert list(ro.iterdir()) == []
    finally:
        ro.chmod(0o755)


def test_writer_disk_full_midway_removes_the_temp_folder(tmp_path, monkeypatch):
    from segnet.data import tgs

    calls = {"n": 0}
    real = tgs._write_png

    def full(path, a):
        calls["n"] += 1
        if calls["n"] == 3:
            raise OSError(28, "No space left on device", str(path))
        real(path, a)

    monkeypatch.setattr(tgs, "_write_png", full)
    with pytest.raises(DataError, match=r"ds: cannot write the dataset \(No space left on device"):
        _write_tiny(tmp_path / "ds")
    assert list(tmp_path.iterdir()) == []


def test_writer_refuses_a_file_at_the_target(tmp_path):
    (tmp_path / "ds").write_text("mine")
    with pytest.raises(DataError, match="refusing"):
        _write_tiny(tmp_path / "ds")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ds"] and (tmp_path / "ds").read_text() == "mine"
