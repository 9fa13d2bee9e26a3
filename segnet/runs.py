"""A finished training run, read back from MLflow: its config, its best model, its threshold.

A `segnet cv` parent reads back as its fold ensemble: its config, the fold runs (``members``, each a
TrainedRun) and the threshold tuned on the out-of-fold probabilities; ``TrainedRun.predictor()`` averages
the fold models' logits.
"""

from __future__ import annotations

import tempfile
from dataclasses import dataclass, field
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
    members: list[TrainedRun] = field(default_factory=list)  # a cv run: its fold runs (``model`` is None)

    def predictor(self, tta: bool | None = None):
        """An ``inference.Predictor`` of the model with the run's settings and threshold; for a cv run an
        ``EnsemblePredictor``: the mean of the fold models' logits (each with flip TTA when ``tta``,
        default the run's eval.tta) and the out-of-fold threshold."""
        from segnet.inference import EnsemblePredictor, Predictor

        tta = self.cfg.eval.tta if tta is None else bool(tta)
        if self.members:
            return EnsemblePredictor([m.predictor(tta) for m in self.members], self.threshold)
        return Predictor.from_config(self.model, self.cfg, self.threshold, tta=tta)


def run_config(run_id: str, overrides: list[str] | tuple[str, ...] = ()) -> tuple[str, object, Config]:
    """The store, the MLflow run and its resolved config (with ``overrides``), without loading a model."""
    uri = store_uri(overrides)
    info = tracking.get_run(uri, run_id)  # before TensorFlow is imported: a wrong id fails fast and quietly
    with tempfile.TemporaryDirectory() as tmp:
        text = tracking.download_artifact(uri, run_id, "config.yaml", tmp).read_text()
    return uri, info, config_from_yaml(text, overrides, where=f"run {run_id} config.yaml")


def load_run(run_id: str, overrides: list[str] | tuple[str, ...] = ()) -> TrainedRun:
    """The run's resolved config (with ``overrides``), its best model and its tuned threshold; for a
    `segnet cv` run, its fold runs and the out-of-fold threshold.

    The store is ``$MLFLOW_TRACKING_URI``, else a ``tracking.uri=`` override, else the default store.
    """
    uri, info, cfg = run_config(run_id, overrides)
    if info.data.tags.get("segnet.role") == "cv":
        return _load_cv(uri, info, cfg, overrides)
    from segnet.models.decoders import resolve_decoder

    local = paths.RUNS_DIR / run_id / "best.keras"
    if cfg.tracking.log_model:
        model = tracking.load_logged_model(uri, run_id)
    elif local.exists():
        import keras

        from segnet.models import register_with_keras

        register_with_keras()  # segnet's custom layers and losses, for Keras to load the model

        model = keras.models.load_model(local, compile=False)
    else:
        raise SegnetError(f"run '{run_id}' logged no model (tracking.log_model=false) and {local} is gone")
    threshold = info.data.metrics.get("best_threshold")
    if threshold is None:
        raise SegnetError(f"run '{run_id}' has no best_threshold: it did not finish training")
    spec, _ = resolve_decoder(cfg.model.decoder, cfg.decoder)
    return TrainedRun(run_id, uri, cfg, model, float(threshold), spec)


def _load_cv(uri: str, info, cfg: Config, overrides) -> TrainedRun:
    """A cv parent: the fold runs it scored out of fold (tag ``segnet.cv_folds``), each loaded alone."""
    run_id = info.info.run_id
    folds = info.data.tags.get("segnet.cv_folds")
    threshold = info.data.metrics.get("oof_threshold")
    if not folds or threshold is None:
        raise SegnetError(f"cv run '{run_id}' has no fold ensemble: it did not finish (run the same "
                          f"`segnet cv` again, or `segnet cv --resume {run_id}`)")
    members = [load_run(fold_id, overrides) for fold_id in folds.split(",")]
    return TrainedRun(run_id, uri, cfg, None, float(threshold), members[0].spec, members)


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
    scores = ", ".join(f"{k.removeprefix('segnet.')} {tags[k]}" for k in ("segnet.val_tgs_map_tuned",
                                                                         "segnet.best_val_tgs_map") if k in tags)
    description = (f"{tags.get('segnet.variant', 'segnet')} from run {run_id} ({info.info.run_name}); {scores}; "
                   f"data {tags.get('segnet.dataset', '?')} {tags.get('segnet.data_fingerprint', '?')}")
    mv = tracking.register_model(uri, run_id, name, alias, tags=tags, description=description)
    where = f"models:/{name}@{alias}" if alias else f"models:/{name}/{mv.version}"
    print(f"registered: run {run_id} as {name} version {mv.version}"
          f"{f' (alias {alias})' if alias else ''}; use it with --model {where}", flush=True)
    return mv
