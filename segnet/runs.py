"""A finished training run, read back from MLflow: its config, its best model, its threshold."""

from __future__ import annotations

import tempfile
from dataclasses import dataclass

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


def load_run(run_id: str, overrides: list[str] | tuple[str, ...] = ()) -> TrainedRun:
    """The run's resolved config (with ``overrides``), its best model and its tuned threshold."""
    uri = tracking.tracking_uri()
    info = tracking.get_run(uri, run_id)  # before TensorFlow is imported: a wrong id fails fast and quietly
    from segnet.models.decoders import resolve_decoder

    with tempfile.TemporaryDirectory() as tmp:
        text = tracking.download_artifact(uri, run_id, "config.yaml", tmp).read_text()
    cfg = config_from_yaml(text, overrides, where=f"run {run_id} config.yaml")
    local = paths.RUNS_DIR / run_id / "best.keras"
    if cfg.tracking.log_model:
        model = tracking.load_logged_model(uri, run_id)
    elif local.exists():
        import keras

        import segnet.models  # noqa: F401  (registers the custom layers)

        model = keras.models.load_model(local, compile=False)
    else:
        raise SegnetError(f"run '{run_id}' logged no model (tracking.log_model=false) and {local} is gone")
    threshold = info.data.metrics.get("best_threshold")
    if threshold is None:
        raise SegnetError(f"run '{run_id}' has no best_threshold: it did not finish training")
    spec, _ = resolve_decoder(cfg.model.decoder, cfg.decoder)
    return TrainedRun(run_id, uri, cfg, model, float(threshold), spec)
