"""Data: the Kaggle TGS layout (real or synthetic), RLE, folds and the tf.data pipeline.

Public API: ``load_dataset(cfg)`` -> :class:`LoadedData` (``.images``, ``.masks``, ``.ids``, ``.dir``, ...);
see ``discovery`` (which dataset, reading it), ``pipeline`` (network size, ``tf.data``), ``tgs``, ``folds``,
``rle``, ``synthetic``. TensorFlow and albumentations are imported only when a pipeline is built.
"""

from segnet.data.discovery import LoadedData, load_dataset, resolve_data_dir
from segnet.data.folds import make_folds, split
from segnet.data.pipeline import from_network, make_dataset, to_network
from segnet.data.rle import rle_decode, rle_encode
from segnet.data.tgs import (
    DatasetSummary,
    dataset_kind,
    fingerprint,
    read_dataset,
    read_images,
    validate,
    write_dataset,
)

__all__ = [
    "DatasetSummary",
    "LoadedData",
    "dataset_kind",
    "fingerprint",
    "from_network",
    "load_dataset",
    "make_dataset",
    "make_folds",
    "read_dataset",
    "read_images",
    "resolve_data_dir",
    "rle_decode",
    "rle_encode",
    "split",
    "to_network",
    "validate",
    "write_dataset",
]
