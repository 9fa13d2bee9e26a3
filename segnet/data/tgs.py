"""The Kaggle TGS Salt layout: read, validate and write.

A dataset folder holds ``train/images/<id>.png``, ``train/masks/<id>.png``, ``train.csv`` (``id,rle_mask``),
``depths.csv`` (``id,z``) and optionally ``test/images/<id>.png``. The real data and segnet's synthetic
generator share this layout, so this one reader serves both.

Every problem is a :class:`~segnet.errors.DataError` with one line naming the id or file. ``validate`` and
``read_dataset`` run the same checks; each PNG is decoded once and the checks run on the decoded arrays.
"""

from __future__ import annotations

import hashlib
import io
import json
import math
import os
import zlib
from collections.abc import Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image

from segnet.atomic import remove, temp_path
from segnet.data.rle import rle_decode, rle_encode
from segnet.errors import DataError

IMG_SIZE = 101
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
SYNTHETIC_MARKER = "SYNTHETIC"  # a JSON file with the generator's parameters; its presence means "synthetic"
PROGRESS_MIN = 500  # show a progress bar from this many images on


# --------------------------------------------------------------------------------------------------
# Summary
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class DatasetSummary:
    """What ``validate`` found: counts and the depth range of the train ids."""

    root: Path
    kind: str  # "tgs" | "synthetic"
    n_images: int
    n_masks: int
    n_empty: int
    depth_min: int | None
    depth_max: int | None
    n_test: int
    mean_coverage: float
    fingerprint: str

    def lines(self) -> list[str]:
        depth = f"{self.depth_min}..{self.depth_max}" if self.depth_min is not None else "n/a"
        return [
            f"dataset: {self.root} ({self.kind}, fingerprint {self.fingerprint})",
            f"images: {self.n_images}",
            f"masks: {self.n_masks}",
            f"empty masks: {self.n_empty} ({self.n_empty / max(self.n_images, 1):.1%})",
            f"mean coverage: {self.mean_coverage:.3f}",
            f"depth range: {depth}",
            f"test images: {self.n_test}",
        ]

    def __str__(self) -> str:
        return "\n".join(self.lines())


# --------------------------------------------------------------------------------------------------
# Small helpers
# --------------------------------------------------------------------------------------------------


def dataset_kind(root: str | Path) -> str:
    """'synthetic' when the folder carries segnet's generator marker, else 'tgs'."""
    return "synthetic" if (Path(root) / SYNTHETIC_MARKER).is_file() else "tgs"


def synthetic_params(root: str | Path) -> dict | None:
    """The generator parameters recorded in a synthetic dataset's marker, or None."""
    p = Path(root) / SYNTHETIC_MARKER
    if not p.is_file():
        return None
    try:
        return json.loads(p.read_text())
    except (OSError, ValueError):
        return {}


def _os_reason(e: OSError) -> str:
    """``strerror: filename`` of an OSError, for one-line messages."""
    what = e.strerror or type(e).__name__
    return f"{what}: {e.filename}" if e.filename else what


def _list_pngs(folder: Path) -> dict[str, Path]:
    """id -> path for every ``<id>.png``; any other (non-hidden) entry is an extra file.

    Ids are the file names without ``.png`` and without surrounding whitespace (as in the CSVs), so two
    files whose names differ only by such whitespace (``abc.png``, ``abc .png``) are one id twice: an error.
    """
    out: dict[str, Path] = {}
    try:
        with os.scandir(folder) as it:
            entries = sorted((e.name, e.path, e.is_file()) for e in it)
    except OSError as e:
        raise DataError(f"{folder}: cannot list the folder ({_os_reason(e)})") from None
    for name, path, is_file in entries:
        if name.startswith("."):
            continue
        if not name.endswith(".png") or not is_file:
            raise DataError(f"{folder / name}: extra file (only <id>.png files belong here)")
        i = name[:-4].strip()
        if not i:
            raise DataError(f"{folder / name}: no id in the file name")
        if i in out:
            raise DataError(
                f"{folder}: files '{out[i].name}' and '{name}' are the same id '{i}' "
                "(ids ignore surrounding whitespace); keep one"
            )
        out[i] = Path(path)
    return out


def fingerprint(root: str | Path) -> str:
    """A short sha256 over train.csv and the names and sizes of the train PNGs (cheap: no decoding)."""
    root = Path(root)
    h = hashlib.sha256()
    csv = root / "train.csv"
    if not csv.is_file():
        raise DataError(f"{csv}: missing (not a Kaggle-layout dataset)")
    h.update(csv.read_bytes())
    for sub in ("train/images", "train/masks"):
        folder = root / sub
        if not folder.is_dir():
            continue
        with os.scandir(folder) as it:
            entries = sorted((e.name, e.stat().st_size) for e in it if not e.name.startswith("."))
        for name, size in entries:
            h.update(f"{sub}/{name}:{size}\n".encode())
    return h.hexdigest()[:12]


def _read_csv(path: Path, columns: tuple[str, ...]) -> pd.DataFrame:
    """The CSV as strings, ids stripped of surrounding whitespace; an empty or repeated id is an error.

    Two ids that differ only by surrounding whitespace (``abc`` and ``abc ``) are the same id twice.
    """
    if not path.is_file():
        raise DataError(f"{path}: missing" + (" (it is a folder)" if path.is_dir() else ""))
    try:
        df = pd.read_csv(path, dtype=str, keep_default_na=False, encoding="utf-8-sig")
    except OSError as e:
        raise DataError(f"{path}: cannot read ({_os_reason(e)})") from None
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as e:
        raise DataError(f"{path}: unreadable CSV ({str(e).splitlines()[0] if str(e) else type(e).__name__})") from None
    if list(df.columns[: len(columns)]) != list(columns):
        raise DataError(f"{path}: expected columns {','.join(columns)}, found {','.join(map(str, df.columns))}")
    df = df.fillna("")  # a row with fewer fields than the header
    raw = df["id"]
    ids = raw.str.strip()
    if (ids == "").any():
        k = int(np.flatnonzero((ids == "").to_numpy())[0])
        raise DataError(f"{path}: data row {k + 1} has an empty id")
    dup = ids.duplicated(keep=False)
    if dup.any():
        first = ids[dup].iloc[0]
        same = raw[ids == first].tolist()
        if len(set(same)) == 1:
            raise DataError(f"{path}: id {first} appears more than once")
        a, b = sorted(set(same))[:2]
        raise DataError(
            f"{path}: ids '{a}' and '{b}' are the same id once surrounding whitespace is ignored; keep one"
        )
    df["id"] = ids
    return df


def read_train_csv(root: str | Path) -> dict[str, str]:
    """id -> rle_mask from train.csv (empty string for an empty mask)."""
    path = Path(root) / "train.csv"
    df = _read_csv(path, ("id", "rle_mask"))
    return dict(zip(df["id"], df["rle_mask"].str.strip(), strict=True))


def read_depths(root: str | Path) -> dict[str, int]:
    """id -> depth z from depths.csv."""
    path = Path(root) / "depths.csv"
    df = _read_csv(path, ("id", "z"))
    z = pd.to_numeric(df["z"].str.strip(), errors="coerce").to_numpy(dtype=np.float64)
    with np.errstate(invalid="ignore"):
        bad = ~np.isfinite(z) | (z != np.round(z)) | (np.abs(z) > MAX_DEPTH)
    if bad.any():
        k = int(np.flatnonzero(bad)[0])
        raise DataError(f"{path}: id {df['id'].iloc[k]} has {_depth_problem(df['z'].iloc[k])}")
    return dict(zip(df["id"], z.astype(np.int64).tolist(), strict=True))


MAX_DEPTH = 1_000_000  # metres; TGS depths are 50..959


def _depth_problem(raw: str) -> str:
    """What is wrong with one depth value (for the error message)."""
    text = raw.strip()
    if not text:
        return "an empty depth (z)"
    try:
        v = float(text)
    except ValueError:
        return f"a non-numeric depth '{raw}'"
    if not math.isfinite(v):
        return f"a non-finite depth '{raw}'"
    if v != round(v):
        return f"a non-integer depth '{raw}'"
    return f"an out-of-range depth '{raw}' (at most {MAX_DEPTH} in absolute value)"


# --------------------------------------------------------------------------------------------------
# PNG decoding (one file -> one array, every check on the decoded array)
# --------------------------------------------------------------------------------------------------


try:  # OpenCV (installed with albumentations) decodes PNGs about twice as fast as PIL
    import cv2 as _cv2
except ImportError:  # pragma: no cover
    _cv2 = None
if _cv2 is not None and "OPENCV_LOG_LEVEL" not in os.environ:
    # A broken PNG becomes one DataError line (PIL's diagnosis), not also an OpenCV "[ WARN ...]" line on stderr.
    try:
        _cv2.utils.logging.setLogLevel(_cv2.utils.logging.LOG_LEVEL_ERROR)
    except AttributeError:  # pragma: no cover - an OpenCV build without the logging module
        pass


def _pil_decode(path: Path, data: bytes, what: str) -> np.ndarray:
    try:
        im = Image.open(io.BytesIO(data))
        im.load()
    except (OSError, SyntaxError, ValueError, zlib.error, EOFError) as e:
        raise DataError(f"{path}: truncated or corrupt PNG {what} ({e})") from None
    if im.mode in ("P", "PA"):  # palette: its colours (alpha kept apart, as OpenCV does)
        im = im.convert("RGBA")
    return np.asarray(im)


def _decode_png(path: Path, what: str) -> np.ndarray:
    """Raw pixels of a 101x101 PNG: (H, W) or (H, W, C), uint8 or uint16. Errors name the file."""
    try:
        data = path.read_bytes()
    except OSError as e:
        raise DataError(f"{path}: cannot read {what} ({e.strerror or e})") from None
    if not data.startswith(PNG_SIGNATURE):
        raise DataError(f"{path}: not a PNG file ({what})")
    a = None
    if _cv2 is not None:
        a = _cv2.imdecode(np.frombuffer(data, np.uint8), _cv2.IMREAD_UNCHANGED)
    if a is None:  # no OpenCV, or a broken file: PIL gives the diagnosis
        a = _pil_decode(path, data, what)
    if a.shape[:2] != (IMG_SIZE, IMG_SIZE):
        raise DataError(f"{path}: {what} is {a.shape[1]}x{a.shape[0]}, expected {IMG_SIZE}x{IMG_SIZE}")
    return a


def _colour_channels(a: np.ndarray) -> np.ndarray:
    """(H, W, C) without the alpha channel: grey+alpha -> grey, RGBA/BGRA -> the 3 colour channels."""
    return a[..., :3] if a.shape[-1] >= 3 else a[..., :1]


def decode_image(path: str | Path) -> np.ndarray:
    """One seismic image as uint8 (101, 101). RGB with R==G==B (the real data) keeps one channel.

    An alpha channel is ignored.
    """
    path = Path(path)
    a = _decode_png(path, "image")
    if a.ndim == 3:
        a = _colour_channels(a)
        c0 = a[..., 0]
        if a.shape[-1] == 1 or (np.array_equal(c0, a[..., 1]) and np.array_equal(c0, a[..., 2])):
            a = c0
        else:  # colour image: luminance (the channel order does not matter much for R!=G!=B)
            a = np.round(a.astype(np.float64).mean(axis=-1)).astype(a.dtype)
    if a.dtype == np.uint16:
        return np.round(a.astype(np.float64) * (255.0 / 65535.0)).astype(np.uint8)
    if a.dtype != np.uint8:
        raise DataError(f"{path}: unsupported image pixel type {a.dtype}")
    return np.ascontiguousarray(a)


def decode_mask(path: str | Path) -> np.ndarray:
    """One mask as uint8 {0,1} (101, 101), whatever the bit depth (8-bit 0/255 or 16-bit 0/65535).

    Salt is where the grey (or any colour) value is non-zero; an alpha channel (LA, RGBA) is ignored:
    an opaque black pixel is no salt.
    """
    a = _decode_png(Path(path), "mask")
    if a.ndim == 3:
        a = _colour_channels(a).max(axis=-1)
    return (a > 0).astype(np.uint8)


def _progress(it: Iterable, total: int, desc: str, show: bool | None) -> Iterable:
    if show is None:
        show = total >= PROGRESS_MIN
    if not show:
        return it
    from tqdm import tqdm

    return tqdm(it, total=total, desc=desc, unit="img", leave=False, mininterval=0.5)


def _map(fn, items: Sequence, desc: str, progress: bool | None) -> list:
    """Decode in a few threads (PIL's zlib releases the GIL) with an optional progress bar."""
    workers = min(8, os.cpu_count() or 1)
    if len(items) < 64 or workers < 4:  # measured: on 2 cores threads only add overhead
        return [fn(x) for x in _progress(items, len(items), desc, progress)]
    with ThreadPoolExecutor(workers) as ex:
        return list(_progress(ex.map(fn, items, chunksize=32), len(items), desc, progress))


# --------------------------------------------------------------------------------------------------
# Validation and reading (same code path)
# --------------------------------------------------------------------------------------------------


@dataclass
class _Scan:
    ids: list[str]
    images: np.ndarray | None  # uint8 (N, 101, 101)
    masks: np.ndarray | None  # uint8 (N, 101, 101)
    n_empty: int
    mean_coverage: float
    depths: dict[str, int]
    test_ids: list[str]


def _check_layout(root: Path) -> tuple[dict[str, str], dict[str, Path], dict[str, Path], dict[str, int]]:
    """Set-level checks (cheap, no decoding): files against train.csv and depths.csv."""
    if not root.is_dir():
        raise DataError(f"{root}: dataset folder not found")
    for sub in ("train/images", "train/masks"):
        if not (root / sub).is_dir():
            raise DataError(f"{root / sub}: missing folder (expected the Kaggle layout train/images, train/masks)")
    rles = read_train_csv(root)
    if not rles:
        raise DataError(f"{root / 'train.csv'}: no training images (no rows after the header)")
    images = _list_pngs(root / "train/images")
    masks = _list_pngs(root / "train/masks")
    for i in rles:
        if i not in images:
            raise DataError(f"train.csv id {i}: no image file {root / 'train/images' / (i + '.png')}")
    for i in rles:
        if i not in masks:
            raise DataError(f"train.csv id {i}: missing mask file {root / 'train/masks' / (i + '.png')}")
    for i, p in images.items():
        if i not in rles:
            raise DataError(f"{p}: extra file (id {i} is not in train.csv)")
    for i, p in masks.items():
        if i not in rles:
            raise DataError(f"{p}: extra file (id {i} is not in train.csv)")
    depths = read_depths(root)
    for i in rles:
        if i not in depths:
            raise DataError(f"train.csv id {i}: missing in {root / 'depths.csv'}")
    return rles, images, masks, depths


def _scan(root: Path, limit: int = 0, keep: bool = True, progress: bool | None = None) -> _Scan:
    rles, image_files, mask_files, depths = _check_layout(root)
    ids = sorted(rles)
    if limit and limit > 0:
        ids = ids[:limit]

    def load(i: str) -> tuple[np.ndarray, np.ndarray]:
        img = decode_image(image_files[i])
        mask = decode_mask(mask_files[i])
        truth = rle_decode(rles[i], (IMG_SIZE, IMG_SIZE), where=f"train.csv id {i}")
        if not np.array_equal(truth, mask):
            diff = int(np.count_nonzero(truth != mask))
            raise DataError(f"train.csv id {i}: rle_mask disagrees with {mask_files[i]} ({diff} pixels differ)")
        return img, mask

    pairs = _map(load, ids, f"reading {root.name}", progress)
    n = len(ids)
    images = np.empty((n, IMG_SIZE, IMG_SIZE), np.uint8)
    masks = np.empty((n, IMG_SIZE, IMG_SIZE), np.uint8)
    for k, (img, mask) in enumerate(pairs):
        images[k] = img
        masks[k] = mask
    cover = masks.reshape(n, -1).mean(axis=1) if n else np.zeros(0)
    test_ids: list[str] = []
    test_dir = root / "test/images"
    if test_dir.is_dir():
        test_ids = sorted(_list_pngs(test_dir))
    return _Scan(
        ids=ids,
        images=images if keep else None,
        masks=masks if keep else None,
        n_empty=int((cover == 0).sum()),
        mean_coverage=float(cover.mean()) if n else 0.0,
        depths=depths,
        test_ids=test_ids,
    )


def _check_test_headers(root: Path, test_ids: list[str]) -> None:
    """Test images: a PNG of the right size (header only; they are decoded when predicted)."""
    folder = root / "test/images"
    files = _list_pngs(folder) if test_ids else {}
    for i in test_ids:
        p = files[i]
        try:
            with open(p, "rb") as f:
                head = f.read(8)
        except OSError as e:
            raise DataError(f"{p}: cannot read test image ({_os_reason(e)})") from None
        if head != PNG_SIGNATURE:
            raise DataError(f"{p}: not a PNG file (test image)")
        try:
            with Image.open(p) as im:
                size = im.size
        except (OSError, SyntaxError, ValueError) as e:
            raise DataError(f"{p}: unreadable PNG test image ({e})") from None
        if size != (IMG_SIZE, IMG_SIZE):
            raise DataError(f"{p}: test image is {size[0]}x{size[1]}, expected {IMG_SIZE}x{IMG_SIZE}")


def validate(root: str | Path, progress: bool | None = None) -> DatasetSummary:
    """Check a dataset folder completely; return its counts or raise DataError naming the culprit."""
    root = Path(root)
    scan = _scan(root, keep=False, progress=progress)
    _check_test_headers(root, scan.test_ids)
    z = [scan.depths[i] for i in scan.ids]
    return DatasetSummary(
        root=root,
        kind=dataset_kind(root),
        n_images=len(scan.ids),
        n_masks=len(scan.ids),
        n_empty=scan.n_empty,
        depth_min=min(z) if z else None,
        depth_max=max(z) if z else None,
        n_test=len(scan.test_ids),
        mean_coverage=scan.mean_coverage,
        fingerprint=fingerprint(root),
    )


def read_dataset(
    root: str | Path, limit: int = 0, progress: bool | None = None
) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """Images (N,101,101,1) float32 in [0,1], masks (N,101,101,1) float32 in {0,1}, ids (sorted).

    ``limit`` > 0 keeps the first ``limit`` ids in sorted order. Runs the same checks as ``validate``.
    """
    scan = _scan(Path(root), limit=limit, keep=True, progress=progress)
    assert scan.images is not None and scan.masks is not None
    images = (scan.images.astype(np.float32) / np.float32(255.0))[..., None]
    masks = scan.masks.astype(np.float32)[..., None]
    return images, masks, scan.ids


def read_images(folder: str | Path, progress: bool | None = None) -> tuple[np.ndarray, list[str]]:
    """Every ``<id>.png`` of a folder (e.g. test/images): images (N,101,101,1) float32 in [0,1], sorted ids.

    ``folder`` may also be a dataset root; its ``test/images`` is used then.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise DataError(f"{folder}: image folder not found")
    if (folder / "test/images").is_dir() and not any(folder.glob("*.png")):
        folder = folder / "test/images"
    files = _list_pngs(folder)
    if not files:
        raise DataError(f"{folder}: no .png images")
    ids = sorted(files)
    arrays = _map(lambda i: decode_image(files[i]), ids, f"reading {folder.name}", progress)
    images = (np.stack(arrays).astype(np.float32) / np.float32(255.0))[..., None]
    return images, ids


# --------------------------------------------------------------------------------------------------
# Writing (used by the synthetic generator)
# --------------------------------------------------------------------------------------------------


def _to_u8(a: np.ndarray, what: str) -> np.ndarray:
    a = np.asarray(a)
    if a.ndim == 3 and a.shape[-1] == 1:
        a = a[..., 0]
    if a.shape != (IMG_SIZE, IMG_SIZE):
        raise ValueError(f"{what}: expected shape ({IMG_SIZE}, {IMG_SIZE}), got {a.shape}")
    if a.dtype != np.uint8:
        a = np.clip(np.round(np.asarray(a, np.float64) * 255.0), 0, 255).astype(np.uint8)
    return a


def _write_png(path: Path, a: np.ndarray) -> None:
    # No metadata chunks, fixed compression: the bytes depend on the pixels only.
    Image.fromarray(a, mode="L").save(path, format="PNG", compress_level=6)


class DatasetWriter:
    """Writes a Kaggle-layout dataset into a temporary folder beside ``out`` and renames it on ``close``.

    A failure (or a missing ``close``) leaves no half-written dataset at ``out``; used as a context manager,
    a failure removes the temporary folder and a file-system error (unwritable or full disk, a file where a
    folder should be) becomes a DataError naming ``out``.
    """

    def __init__(self, out: str | Path, marker: dict | None = None):
        self.out = Path(os.path.abspath(out))  # "." and "x/.." have a parent and a name too
        self.tmp = temp_path(self.out)
        try:
            self.out.parent.mkdir(parents=True, exist_ok=True)
            (self.tmp / "train/images").mkdir(parents=True)
            (self.tmp / "train/masks").mkdir(parents=True)
        except OSError as e:
            remove(self.tmp)
            file = next((p for p in self.out.parents if p.exists() and not p.is_dir()), None)
            why = f"{file} is a file, not a folder" if file is not None else _os_reason(e)
            raise DataError(f"{self.out}: cannot create the dataset folder ({why})") from None
        self.marker = marker
        self.rows: list[tuple[str, str]] = []
        self.depths: list[tuple[str, int]] = []
        self.n_test = 0

    def add_train(self, id_: str, image: np.ndarray, mask: np.ndarray, depth: int) -> None:
        img = _to_u8(image, f"image {id_}")
        m = (np.asarray(mask) > 0).astype(np.uint8)
        if m.ndim == 3:
            m = m[..., 0]
        _write_png(self.tmp / "train/images" / f"{id_}.png", img)
        _write_png(self.tmp / "train/masks" / f"{id_}.png", m * np.uint8(255))
        self.rows.append((id_, rle_encode(m)))
        self.depths.append((id_, int(depth)))

    def add_test(self, id_: str, image: np.ndarray, depth: int) -> None:
        folder = self.tmp / "test/images"
        folder.mkdir(parents=True, exist_ok=True)
        _write_png(folder / f"{id_}.png", _to_u8(image, f"test image {id_}"))
        self.depths.append((id_, int(depth)))
        self.n_test += 1

    def close(self) -> Path:
        with open(self.tmp / "train.csv", "w", newline="\n") as f:
            f.write("id,rle_mask\n")
            f.writelines(f"{i},{r}\n" for i, r in self.rows)
        with open(self.tmp / "depths.csv", "w", newline="\n") as f:
            f.write("id,z\n")
            f.writelines(f"{i},{z}\n" for i, z in self.depths)
        if self.marker is not None:
            (self.tmp / SYNTHETIC_MARKER).write_text(json.dumps(self.marker, sort_keys=True, indent=1) + "\n")
        install_dir(self.tmp, self.out)
        return self.out

    def abort(self) -> None:
        remove(self.tmp)

    def __enter__(self) -> DatasetWriter:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is not None:
            self.abort()
            if isinstance(exc, OSError):
                raise DataError(f"{self.out}: cannot write the dataset ({_os_reason(exc)})") from None


def install_dir(tmp: Path, out: Path) -> None:
    """Move a finished folder (written at ``segnet.atomic.temp_path(out)``) into place, replacing an
    existing dataset folder at ``out``.

    A rename cannot replace a non-empty folder (what ``segnet.atomic.atomic_path`` does for files), so an
    old dataset is first renamed aside, then removed. Anything else at ``out`` is refused. On any failure
    ``tmp`` is removed and a DataError names ``out``.
    """
    try:
        if out.exists() or out.is_symlink():
            if out.is_dir() and not out.is_symlink() and not any(out.iterdir()):
                out.rmdir()
            elif out.is_dir() and ((out / "train.csv").exists() or (out / SYNTHETIC_MARKER).exists()):
                trash = temp_path(out, "old")
                os.replace(out, trash)
                remove(trash)
            else:
                remove(tmp)
                raise DataError(f"{out}: exists and is not a dataset folder; refusing to overwrite it")
        os.replace(tmp, out)
    except OSError as e:
        remove(tmp)
        # Another process installed the same folder in the meantime: keep theirs.
        if not (out / "train.csv").exists():
            raise DataError(f"{out}: cannot install the dataset folder ({_os_reason(e)})") from None


def write_dataset(
    out: str | Path,
    ids: Sequence[str],
    images: np.ndarray,
    masks: np.ndarray,
    depths: Sequence[int],
    test_ids: Sequence[str] = (),
    test_images: np.ndarray | None = None,
    test_depths: Sequence[int] = (),
    marker: dict | None = None,
) -> Path:
    """Write arrays (uint8 0..255 or float in [0,1]; masks nonzero = salt) in the Kaggle layout, atomically."""
    if not (len(ids) == len(images) == len(masks) == len(depths)):
        raise ValueError("ids, images, masks and depths must have the same length")
    with DatasetWriter(out, marker) as w:
        for i, img, m, z in zip(ids, images, masks, depths, strict=True):
            w.add_train(i, img, m, z)
        if len(test_ids):
            assert test_images is not None
            for i, img, z in zip(test_ids, test_images, test_depths, strict=True):
                w.add_test(i, img, z)
        return w.close()
