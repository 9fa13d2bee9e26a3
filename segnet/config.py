"""Configuration: YAML files plus dotted overrides, validated strictly, frozen.

``load_config(path, overrides)`` reads ``configs/base.yaml`` (every key, with defaults), then a profile
(``path``; ``configs/quick.yaml`` when none is given), then ``key=value`` overrides. Any unknown key,
wrong type or bad value raises ConfigError naming the key and what is allowed, before any work starts.
"""

from __future__ import annotations

import copy
import dataclasses
import hashlib
import json
import math
import os
import types
import typing
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import yaml

from segnet import paths
from segnet.errors import ConfigError, DataError
from segnet.losses import LOSSES


@dataclass(frozen=True)
class AugmentConfig:
    enabled: bool = True
    hflip: float = 0.5
    affine: float = 0.5
    shift: float = 0.0625
    scale: float = 0.1
    rotate: float = 10.0
    brightness_contrast: float = 0.5
    brightness: float = 0.1
    contrast: float = 0.1


@dataclass(frozen=True)
class DataConfig:
    dir: str | None = None
    size: int = 112
    resize_mode: str = "pad"
    n_folds: int = 5
    fold: int = 0
    fold_seed: int = 0
    limit: int = 0
    synth_n: int = 1200
    synth_seed: int = 0
    augment: AugmentConfig = field(default_factory=AugmentConfig)


@dataclass(frozen=True)
class ModelConfig:
    encoder: str = "unet"
    encoder_weights: str | None = None  # null | imagenet | a weights file (the encoder's EncoderWeights)
    decoder: str = "transposed"
    depth: int = 4
    filters: int = 16
    residual: bool = False
    dropout: float = 0.0
    scse: bool = False
    hypercolumn: bool = False
    deep_supervision: bool = False


@dataclass(frozen=True)
class TrainConfig:
    epochs: int = 30
    batch_size: int = 32
    lr: float = 1e-3
    schedule: str = "cosine"
    min_lr: float = 1e-5
    cycles: int = 1
    loss: str = "bce_dice"
    finetune_loss: str = "lovasz_hinge"
    lovasz_epochs: int = 0
    salt_weight: float = 0.05
    early_stopping: int = 10
    seed: int = 42
    strategy: str = "auto"
    precision: str = "float32"
    resume: bool = False
    threads: int = 0


@dataclass(frozen=True)
class EvalConfig:
    tta: bool = True
    threshold_search: bool = True
    overlays: int = 6


@dataclass(frozen=True)
class TrackingConfig:
    uri: str | None = None
    experiment: str = "segnet"
    run_name: str | None = None
    variant: str | None = None
    log_model: bool = True
    register: str | None = None
    system_metrics: bool = True


@dataclass(frozen=True)
class ClusterConfig:
    """What each child of an ablation or a cv asks of a Ray cluster (``--backend ray``): Ray's resources."""

    cpus_per_child: float = 1.0
    gpus_per_child: float = 0.0


@dataclass(frozen=True)
class Config:
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    decoder: dict = field(default_factory=dict)  # decoder options, validated against the registry
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    tracking: TrackingConfig = field(default_factory=TrackingConfig)
    cluster: ClusterConfig = field(default_factory=ClusterConfig)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def flat(self) -> dict[str, Any]:
        """``{"model.decoder": "transposed", ...}``: what MLflow logs as params."""
        return _flatten(self.to_dict())

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.to_dict(), sort_keys=False)

    def hash(self, *, by_path: bool = False) -> str:
        """Short hash of the resolved config, minus the keys that do not change the result.

        A ``data.dir`` that holds a dataset here counts by the dataset's fingerprint, not by how the path
        is spelled (``../shared/x``, ``/abs/shared/x`` and a symlink to it are one experiment).
        ``by_path`` (``path_hash()``): ``data.dir`` as written, what this gives where the folder is not
        (a planning host without the data) and what versions before the fingerprint tagged runs with."""
        d = self.flat()
        if not by_path and (identity := _data_identity(d.get("data.dir"))):
            d["data.dir"] = identity
        for k in ("train.resume", "tracking.uri", "tracking.run_name", "tracking.log_model", "tracking.register",
                  "tracking.system_metrics", "cluster.cpus_per_child", "cluster.gpus_per_child"):
            d.pop(k, None)
        for k, default in _ADDED_KEYS.items():  # at their default, newer keys keep older configs' hashes
            if d.get(k) == default:
                d.pop(k)
        return hashlib.sha256(json.dumps(d, sort_keys=True).encode()).hexdigest()[:12]

    def path_hash(self) -> str:
        """The hash with ``data.dir`` as written (see ``hash``): runs and parents are tagged with it too."""
        return self.hash(by_path=True)

    def hashes(self) -> list[str]:
        """``hash()``, then ``path_hash()`` when it differs: the tags that find a run of this config."""
        return list(dict.fromkeys([self.hash(), self.path_hash()]))

    def variant(self) -> str:
        """Human label of the model variant: the decoder's (``transposed_k3``, ``upsampling_bilinear``), then
        ``+<encoder>`` when it is not ``unet`` and ``+<head>`` per head switched on (``+scse``,
        ``+hypercolumn``, ``+deep_supervision``): ``transposed_k3+resnet+scse``."""
        if self.tracking.variant:
            return self.tracking.variant
        from segnet.models.decoders import resolve_decoder

        spec, opts = resolve_decoder(self.model.decoder, self.decoder)
        m = self.model
        extras = [m.encoder] if m.encoder != "unet" else []
        extras += [h for h in ("scse", "hypercolumn", "deep_supervision") if getattr(m, h)]
        return "+".join([spec.label(opts), *extras])  # abbreviations live on the decoder's options (Option.label)

    def replace(self, overrides: list[str] | tuple[str, ...]) -> Config:
        """A new validated config with ``key=value`` overrides applied."""
        return _from_dict(_apply_overrides(self.to_dict(), overrides))


# Allowed values beyond the type: key -> (check, what is allowed).
_CHOICES = {
    "data.resize_mode": ("pad", "resize"),
    "train.schedule": ("cosine", "plateau", "constant", "sgdr"),
    "train.loss": LOSSES,  # the loss registry itself (segnet.losses, importable without TensorFlow)
    "train.finetune_loss": LOSSES,
    "train.strategy": ("auto", "one_device", "mirrored", "multi_worker"),
    "train.precision": ("float32", "mixed_float16"),
}
_FINGERPRINTS: dict[tuple, str] = {}  # (folder, its listing's mtimes) -> fingerprint, for Config.hash


def _data_identity(data_dir) -> str | None:
    """``fingerprint:<fp>`` of a ``data.dir`` that holds a dataset here, else None (unset, not on this
    machine, unreadable). Cached per folder while train.csv and the image and mask folders are unchanged."""
    if data_dir in (None, ""):
        return None
    from segnet.data.tgs import fingerprint

    try:
        root = Path(str(data_dir)).expanduser().resolve()
        key = (str(root), *(os.stat(root / f).st_mtime_ns for f in ("train.csv", "train/images", "train/masks")
                            if (root / f).exists()))
        if not (root / "train.csv").is_file():
            return None
        if key not in _FINGERPRINTS:
            _FINGERPRINTS[key] = fingerprint(root)
    except (OSError, DataError):
        return None
    return f"fingerprint:{_FINGERPRINTS[key]}"


# Keys added after configs were first hashed -> their default, left out of Config.hash() at that value.
_ADDED_KEYS = {"model.scse": False, "model.hypercolumn": False, "model.deep_supervision": False,
               "model.encoder": "unet", "model.encoder_weights": None, "train.finetune_loss": "lovasz_hinge",
               "train.cycles": 1, "train.salt_weight": 0.05}
_RANGES = {
    "data.size": (32, 1024),
    "data.n_folds": (2, 100),
    "data.fold": (0, 99),
    "data.fold_seed": (0, 2**32 - 1),
    "data.limit": (0, None),
    "data.synth_n": (8, None),
    "data.synth_seed": (0, 2**32 - 1),
    "data.augment.rotate": (0.0, 180.0),
    "model.depth": (1, 6),
    "model.filters": (1, 1024),
    "model.dropout": (0.0, 0.9),
    "train.epochs": (1, 100000),
    "train.batch_size": (1, 4096),
    "train.lr": (1e-8, 10.0),
    "train.min_lr": (0.0, 10.0),
    "train.cycles": (1, 100000),
    "train.lovasz_epochs": (0, 100000),
    "train.salt_weight": (0.0, 100.0),
    "train.early_stopping": (0, 100000),
    "train.seed": (0, 2**32 - 1),  # what numpy's legacy seeding accepts
    "train.threads": (0, 1024),
    "eval.overlays": (0, 100),
    "cluster.cpus_per_child": (0.0, None),
    "cluster.gpus_per_child": (0.0, None),
}


def _flatten(d: dict, prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(_flatten(v, key + "."))
        else:
            out[key] = v
    return out


def _read_yaml(path: Path) -> dict:
    if not path.exists():
        raise ConfigError(f"config file not found: {path}")
    if path.is_dir():
        raise ConfigError(f"{path}: is a folder, not a YAML config file")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except OSError as e:
        raise ConfigError(f"{path}: cannot read the config file ({e.strerror or e})") from None
    except UnicodeDecodeError:
        raise ConfigError(f"{path}: not a text file (not UTF-8)") from None
    except yaml.YAMLError as e:
        raise ConfigError(f"{path}: not valid YAML ({str(e).splitlines()[0]})") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: the top level must be a mapping of sections")
    return data


def _merge(base: dict, over: dict, where: str = "") -> dict:
    out = copy.deepcopy(base)
    for k, v in over.items():
        key = f"{where}{k}"
        if k not in out:
            valid = ", ".join(f"{where}{x}" for x in out)
            raise ConfigError(f"unknown config key '{key}' (valid here: {valid})")
        if isinstance(out[k], dict) and out[k] and key != "decoder":
            if not isinstance(v, dict):
                raise ConfigError(f"config key '{key}' is a section; set its keys like {key}.<name>=...")
            out[k] = _merge(out[k], v, key + ".")
        elif key == "decoder":
            if not isinstance(v, dict):
                raise ConfigError("config key 'decoder' is a section; set decoder.<option>=...")
            out[k] = {**out[k], **v}
        else:
            out[k] = v
    return out


def _apply_overrides(d: dict, overrides) -> dict:
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"override '{item}' must look like key=value (e.g. train.epochs=5)")
        key, _, raw = item.partition("=")
        key = key.strip()
        try:
            value = yaml.safe_load(raw) if raw.strip() else None
        except yaml.YAMLError:
            value = raw
        nested: Any = value
        for part in reversed(key.split(".")):
            nested = {part: nested}
        d = _merge(d, nested)
    return d


def _check_type(key: str, value: Any, tp: Any) -> Any:
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        tp = next(a for a in args if a is not type(None))
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise ConfigError(f"config key '{key}' must be true or false, got {value!r}")
    if tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        raise ConfigError(f"config key '{key}' must be an integer, got {value!r}")
    if tp is float:
        number = None
        if isinstance(value, int | float) and not isinstance(value, bool):
            number = float(value)
        elif isinstance(value, str):  # YAML 1.1 reads 1e-4 (no dot) as a string
            try:
                number = float(value)
            except ValueError:
                pass
        if number is None:
            raise ConfigError(f"config key '{key}' must be a number, got {value!r}")
        if not math.isfinite(number):  # .nan, .inf, "nan", "-inf", 1e999: a run of NaN losses, not a number
            raise ConfigError(f"config key '{key}' must be a finite number, got {value!r}")
        return number
    if tp is str:
        if isinstance(value, str) and value:
            return value
        if isinstance(value, int | float) and not isinstance(value, bool) and key == "data.dir":
            return str(value)
        raise ConfigError(f"config key '{key}' must be a string, got {value!r}")
    return value


def _build(cls, d: dict, where: str):
    hints = typing.get_type_hints(cls)
    kwargs = {}
    for f in fields(cls):
        key = f"{where}{f.name}"
        value = d.get(f.name)
        tp = hints[f.name]
        if dataclasses.is_dataclass(tp):
            kwargs[f.name] = _build(tp, value or {}, key + ".")
            continue
        if key == "decoder":
            kwargs[f.name] = dict(value or {})
            continue
        value = _check_type(key, value, tp)
        if key in _CHOICES and value not in _CHOICES[key]:
            raise ConfigError(f"config key '{key}' must be one of {', '.join(_CHOICES[key])}; got {value!r}")
        if key in _RANGES and value is not None:
            lo, hi = _RANGES[key]
            if value < lo or (hi is not None and value > hi):
                allowed = f">= {lo}" if hi is None else f"in [{lo}, {hi}]"
                raise ConfigError(f"config key '{key}' must be {allowed}; got {value!r}")
        if key.startswith("data.augment.") and f.name not in ("enabled", "rotate") and not 0 <= value <= 1:
            raise ConfigError(f"config key '{key}' must be in [0, 1]; got {value!r}")
        kwargs[f.name] = value
    return cls(**kwargs)


def _from_dict(d: dict) -> Config:
    cfg = _build(Config, d, "")
    if cfg.data.size < 101 and cfg.data.resize_mode == "pad":
        raise ConfigError(
            f"config key 'data.size' is {cfg.data.size}, smaller than the 101x101 images: "
            "use data.resize_mode=resize or data.size >= 101"
        )
    if cfg.train.min_lr > cfg.train.lr:
        raise ConfigError(
            f"config key 'train.min_lr' ({cfg.train.min_lr:g}) must be <= train.lr ({cfg.train.lr:g}): "
            "it is the floor the schedule decays to"
        )
    for key in ("cluster.cpus_per_child", "cluster.gpus_per_child"):
        value = getattr(cfg.cluster, key.split(".")[1])
        if value > 1 and value != int(value):  # Ray schedules a fraction of one CPU or GPU, else whole ones
            raise ConfigError(f"config key '{key}' must be a fraction up to 1 or a whole number; got {value:g}")
    if cfg.cluster.cpus_per_child == 0 and cfg.cluster.gpus_per_child == 0:  # Ray would start every child at once
        raise ConfigError("config key 'cluster.cpus_per_child' is 0 with cluster.gpus_per_child 0: a child that asks "
                          "for nothing is not paced by Ray (every child would start at once); ask for CPUs or GPUs")
    if cfg.data.fold >= cfg.data.n_folds:
        raise ConfigError(f"config key 'data.fold' must be < data.n_folds ({cfg.data.n_folds}); got {cfg.data.fold}")
    if cfg.train.cycles > 1 and cfg.train.schedule != "sgdr":
        raise ConfigError(f"config key 'train.cycles' ({cfg.train.cycles}) needs train.schedule=sgdr "
                          f"(got {cfg.train.schedule!r}): only cosine annealing with warm restarts has cycles")
    if cfg.train.cycles > cfg.train.epochs:
        raise ConfigError(f"config key 'train.cycles' ({cfg.train.cycles}) must be <= train.epochs "
                          f"({cfg.train.epochs}): every cycle needs an epoch")
    if cfg.train.salt_weight != TrainConfig.salt_weight and not cfg.model.deep_supervision:
        raise ConfigError(f"config key 'train.salt_weight' ({cfg.train.salt_weight:g}) needs model.deep_supervision=true: "
                          "it weighs the loss of the empty-mask classifier, which only deep supervision has")
    if (cfg.train.lovasz_epochs >= cfg.train.epochs and cfg.train.lovasz_epochs
            and cfg.train.loss != cfg.train.finetune_loss):
        raise ConfigError(
            f"config key 'train.lovasz_epochs' ({cfg.train.lovasz_epochs}) must be < train.epochs ({cfg.train.epochs})"
        )
    # Encoder, decoder name and options are checked against the registries (one place knows what each
    # takes), and the pair against each other: a decoder that needs pooling indices needs an encoder with them.
    from segnet.models.decoders import resolve_decoder
    from segnet.models.encoders import check_pairing, check_weights, resolve_encoder

    spec, _ = resolve_decoder(cfg.model.decoder, cfg.decoder)
    encoder = resolve_encoder(cfg.model.encoder)
    check_pairing(encoder, spec)
    check_weights(encoder, cfg.model.encoder_weights, cfg.model.filters)
    return cfg


def config_from_yaml(text: str, overrides: list[str] | tuple[str, ...] = (), where: str = "config") -> Config:
    """A config saved by a run (its config.yaml artifact), with overrides such as another data.dir."""
    try:
        d = yaml.safe_load(text) or {}
    except yaml.YAMLError as e:
        raise ConfigError(f"{where}: not valid YAML ({str(e).splitlines()[0]})") from None
    base = _read_yaml(paths.BASE_CONFIG)
    try:
        d = _merge(base, d)
    except ConfigError as e:
        raise ConfigError(f"{where}: {e}") from None
    return _from_dict(_apply_overrides(d, overrides))


def load_config(path: str | Path | None = None, overrides: list[str] | tuple[str, ...] = ()) -> Config:
    """base.yaml, then the profile at ``path`` (quick.yaml when None), then the overrides."""
    d = _read_yaml(paths.BASE_CONFIG)
    profile = Path(path) if path else paths.QUICK_CONFIG
    if profile.resolve() != paths.BASE_CONFIG.resolve():
        profile_data = _read_yaml(profile)  # its errors already name the file
        try:
            d = _merge(d, profile_data)
        except ConfigError as e:
            raise ConfigError(f"{profile}: {e}") from None
    d = _apply_overrides(d, overrides)
    cfg = _from_dict(d)
    # A weights file must exist for the run about to start; checked here, not in _from_dict, so that a
    # finished run's config.yaml (config_from_yaml: evaluate, predict) still loads once the file is gone.
    from segnet.models.encoders import resolve_encoder, weights_file

    weights_file(resolve_encoder(cfg.model.encoder), cfg.model.encoder_weights)
    return cfg
