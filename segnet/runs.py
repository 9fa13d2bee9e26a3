"""A finished training run, read back from MLflow: its config, its best model, its threshold.

A `segnet cv` parent reads back as its fold ensemble: its config, the fold runs (``members``, each a
TrainedRun) and the threshold tuned on the out-of-fold probabilities; ``TrainedRun.predictor()`` averages
the fold models' logits. A run trained with ``train.schedule: sgdr`` and ``train.cycles`` > 1 reads back as
its snapshot ensemble: one member per cycle's snapshot, averaged alike.
"""

from __future__ import annotations

import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace

import yaml

from segnet import paths, tracking
from segnet.config import Config, config_from_yaml
from segnet.errors import SegnetError


@dataclass
class TrainedRun:
    run_id: str
    uri: str
    cfg: Config
    model: object
    threshold: float
    spec: object
    # An ensemble (``model`` is None): a cv run's fold runs, or a snapshot run's snapshots (this run, one model each).
    members: list[TrainedRun] = field(default_factory=list)
    ensemble: str = ""  # "fold" or "snapshot" when ``members``

    def networks(self) -> list[TrainedRun]:
        """The runs behind each network this run predicts with: itself, or its members' (a fold ensemble of
        snapshot ensembles flattened; every fold has as many snapshots, so each fold weighs the same)."""
        return [n for m in self.members for n in m.networks()] if self.members else [self]

    def predictor(self, tta: bool | None = None):
        """An ``inference.Predictor`` of the model with the run's settings and threshold; for an ensemble an
        ``EnsemblePredictor``: the mean of its networks' logits (each with flip TTA when ``tta``, default the
        run's eval.tta) and the run's threshold (a cv run's: the out-of-fold one)."""
        from segnet.inference import EnsemblePredictor, Predictor

        tta = self.cfg.eval.tta if tta is None else bool(tta)
        if self.members:
            return EnsemblePredictor([n.predictor(tta) for n in self.networks()], self.threshold)
        return Predictor.from_config(self.model, self.cfg, self.threshold, tta=tta)


def run_config(run_id: str, overrides: list[str] | tuple[str, ...] = ()) -> tuple[str, object, Config]:
    """The store, the MLflow run and its resolved config (with ``overrides``), without loading a model."""
    uri = store_uri(overrides)
    info = tracking.get_run(uri, run_id)  # before TensorFlow is imported: a wrong id fails fast and quietly
    with tempfile.TemporaryDirectory() as tmp:
        text = tracking.download_artifact(uri, run_id, "config.yaml", tmp).read_text()
    return uri, info, config_from_yaml(text, overrides, where=f"run {run_id} config.yaml")


def load_run(run_id: str, overrides: list[str] | tuple[str, ...] = ()) -> TrainedRun:
    """The run's resolved config (with ``overrides``), its best model (or snapshot ensemble) and its tuned
    threshold; for a `segnet cv` run, its fold runs and the out-of-fold threshold.

    The store is ``$MLFLOW_TRACKING_URI``, else a ``tracking.uri=`` override, else the default store.
    """
    uri, info, cfg = run_config(run_id, overrides)
    if info.data.tags.get("segnet.role") == "cv":
        return _load_cv(uri, info, cfg, overrides)
    from segnet.models.decoders import resolve_decoder

    threshold = info.data.metrics.get("best_threshold")
    if threshold is None:
        raise SegnetError(f"run '{run_id}' has no best_threshold: it did not finish training")
    spec, _ = resolve_decoder(cfg.model.decoder, cfg.decoder)
    models = _load_models(uri, run_id, cfg)
    if len(models) == 1:
        return TrainedRun(run_id, uri, cfg, models[0], float(threshold), spec)
    members = [TrainedRun(run_id, uri, cfg, m, float(threshold), spec) for m in models]
    return TrainedRun(run_id, uri, cfg, None, float(threshold), spec, members, ensemble="snapshot")


def snapshot_name(cycle: int) -> str:
    """The file of a finished run's snapshot of ``cycle`` (that cycle's best checkpoint), in its runs folder."""
    return f"snapshot_c{cycle}.keras"


def local_model_files(run_id: str, cfg: Config) -> list[Path]:
    """The Keras files of a finished training run's model in its runs folder: ``best.keras``, or for a
    snapshot ensemble (sgdr, ``train.cycles`` > 1) each cycle's ``snapshot_c{k}.keras``."""
    rdir = paths.RUNS_DIR / run_id
    if cfg.train.cycles > 1:
        return [rdir / snapshot_name(k) for k in range(cfg.train.cycles)]
    return [rdir / "best.keras"]


def _load_models(uri: str, run_id: str, cfg: Config) -> list:
    """The run's Keras models, uncompiled: its logged model's, else the files in its runs folder."""
    if cfg.tracking.log_model:
        return tracking.load_logged_models(uri, run_id)
    local = local_model_files(run_id, cfg)
    gone = [f for f in local if not f.exists()]
    if gone:
        raise SegnetError(f"run '{run_id}' logged no model (tracking.log_model=false) and {gone[0]} is gone")
    import keras

    from segnet.models import register_with_keras

    register_with_keras()  # segnet's custom layers and losses, for Keras to load the model
    return [keras.models.load_model(f, compile=False) for f in local]


def _load_cv(uri: str, info, cfg: Config, overrides) -> TrainedRun:
    """A cv parent: the fold runs it scored out of fold (tag ``segnet.cv_folds``), each loaded alone."""
    run_id = info.info.run_id
    folds = info.data.tags.get("segnet.cv_folds")
    threshold = info.data.metrics.get("oof_threshold")
    if not folds or threshold is None:
        raise SegnetError(f"cv run '{run_id}' has no fold ensemble: it did not finish (run the same "
                          f"`segnet cv` again, or `segnet cv --resume {run_id}`)")
    members = [load_run(fold_id, overrides) for fold_id in folds.split(",")]
    return TrainedRun(run_id, uri, cfg, None, float(threshold), members[0].spec, members, ensemble="fold")


def store_uri(overrides: list[str] | tuple[str, ...] = ()) -> str:
    """The tracking URI for commands that read a run: ``tracking.tracking_uri`` with the ``tracking.uri``
    of the overrides (the last one; parsed as config overrides are), since the run's own config is in
    the store being looked for."""
    uri = None
    for item in overrides:
        key, sep, raw = item.partition("=")
        if sep and key.strip() == "tracking.uri":
            try:
                value = yaml.safe_load(raw) if raw.strip() else None
            except yaml.YAMLError:
                value = raw
            uri = None if value is None else str(value)
    return tracking.tracking_uri(SimpleNamespace(tracking=SimpleNamespace(uri=uri)))


def resolve_run_id(run_id: str | None, model: str | None, overrides: list[str] | tuple[str, ...] = ()) -> str:
    """``--run-id`` or ``--model models:/<name>@<alias>`` (exactly one): the run whose model to use.

    A registered version stands for its source run: its config, its model, its tuned threshold.
    """
    if (run_id is None) == (model is None):
        raise SegnetError("give exactly one of --run-id ID and --model models:/<name>@<alias>")
    if run_id is not None:
        return run_id
    found = tracking.resolve_model_uri(store_uri(overrides), model)
    print(f"model: {model} is run {found}", flush=True)
    return found


def register(run_id: str, name: str = tracking.DEFAULT_REGISTERED_MODEL, alias: str | None = tracking.DEFAULT_ALIAS,
             extra_tags: dict | None = None, uri: str | None = None):
    """`segnet register`: the run's logged model as a version of ``name`` in the MLflow model registry,
    tagged with its variant, scores and data fingerprint, ``alias`` pointing at it. Returns the version."""
    uri = uri or store_uri()
    info = tracking.get_run(uri, run_id)
    tags = {**tracking.registry_tags(info), **(extra_tags or {})}
    scores = ", ".join(f"{k.removeprefix('segnet.')} {tags[k]}" for k in ("segnet.oof_tgs_map",
                                                                         "segnet.val_tgs_map_tuned",
                                                                         "segnet.best_val_tgs_map") if k in tags)
    what = tags.get("segnet.variant", "segnet") + (" fold ensemble" if tags.get("segnet.role") == "cv" else "")
    description = (f"{what} from run {run_id} ({info.info.run_name}); {scores}; "
                   f"data {tags.get('segnet.dataset', '?')} {tags.get('segnet.data_fingerprint', '?')}")
    mv = tracking.register_model(uri, run_id, name, alias, tags=tags, description=description)
    where = f"models:/{name}@{alias}" if alias else f"models:/{name}/{mv.version}"
    print(f"registered: run {run_id} as {name} version {mv.version}"
          f"{f' (alias {alias})' if alias else ''}; use it with --model {where}", flush=True)
    return mv
