"""What the benchmark measures and how much: the model names, output paths and :class:`Settings`."""

from __future__ import annotations

from dataclasses import dataclass

from segnet import paths

BASELINE = "baseline_keras_unet"
EXPERIMENT = "segnet-bench"
DEFAULT_OUT = paths.ROOT / "bench" / "results"
LEVERS_OUT = paths.ROOT / "bench" / "levers"
# lever rows: the default decoder with config overrides and Keras' own (unfused) BatchNormalization
LEVERS = {
    "keras_bn_resize128": ("data.size=128", "data.resize_mode=resize"),
    "keras_bn_pad112": (),
}
INFER_BATCH = 64
IMG = 101
PIPELINE = "segnet.data.pipeline.make_dataset"  # what the models' pipelines and the pipeline rate run


@dataclass(frozen=True)
class Settings:
    """How much to measure. ``QUICK`` keeps every model but cuts steps, rounds and images."""

    rounds: int = 5  # interleaved rounds (median and best over these)
    warmup: int = 1  # untimed fit-path steps per model before the first round (after the tracing step)
    train_steps: int = 2  # fit-path steps per model per round
    step_steps: int = 1  # fit-free steps per model per round (0: not measured, saves a trace per model)
    infer_steps: int = 2  # inference batches per model per round
    n_images: int = 512  # synthetic 101x101 images behind the pipelines
    pipeline_batches: int = 8  # batches timed per round for the pipeline alone
    peak_repeats: int = 5
    memory: str = "subprocess"  # subprocess | inprocess
    baseline_size: int = 128  # the baseline's input side and first-level filters (the tutorial's)
    baseline_filters: int = 16


FULL = Settings()
QUICK = Settings(rounds=3, warmup=0, train_steps=1, step_steps=0, infer_steps=1, n_images=128,
                 pipeline_batches=3, peak_repeats=3, memory="inprocess")
