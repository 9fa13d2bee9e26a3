"""Every custom Keras object segnet registers goes through the shared harness (tests/layer_harness.py).

``CASES`` holds, per name in ``segnet.models.CUSTOM_OBJECTS``, one or more cases: init arguments, a tiny
input batch and what to expect. The tests are parametrized over ``CUSTOM_OBJECTS`` itself, so a layer added
there without a case here fails (and so does a layer registered with Keras under ``segnet>`` but missing
from ``CUSTOM_OBJECTS``).
"""

from __future__ import annotations

import importlib
import pkgutil
from dataclasses import dataclass, field

import keras
import numpy as np
import pytest
import tensorflow as tf

import segnet.models
from segnet.models import CUSTOM_OBJECTS
from segnet.models import layers as L  # noqa: N812
from tests.layer_harness import run_initializer_test, run_layer_test


def _x(*shape, seed=0) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal(shape).astype("float32")


def _pooled_with_indices(b, h, w, c, seed=1) -> tuple[np.ndarray, np.ndarray]:
    """A (b, h/2, w/2, c) map and the argmax of 2x2 pooling of a (b, h, w, c) map (even sizes: TF's convention)."""
    _, idx = tf.nn.max_pool_with_argmax(_x(b, h, w, c, seed=seed), 2, 2, "SAME", include_batch_in_index=False)
    return _x(b, h // 2, w // 2, c, seed=seed + 1), idx.numpy()


def _unpool_conv_inputs() -> list[np.ndarray]:
    _, idx = _pooled_with_indices(2, 6, 8, 3)
    return [_x(2, 3, 4, 5), idx]  # x has 5 channels; the indices address a 3-channel map


@dataclass(frozen=True)
class Case:
    init_kwargs: dict
    inputs: object  # () -> array or list of arrays
    output_shape: tuple | list[tuple]
    output_dtypes: tuple[str, ...] = ("float32",)
    trainable: int = 0
    non_trainable: int = 0
    differentiable: bool = True
    id: str = field(default="")


CASES: dict[str, list[Case]] = {
    "MaxPoolWithArgmax": [
        Case({}, lambda: _x(2, 6, 8, 3), [(2, 3, 4, 3)] * 2, ("float32", "int64"), id="even"),
        Case({}, lambda: _x(2, 5, 7, 3), [(2, 3, 4, 3)] * 2, ("float32", "int64"), id="odd"),
    ],
    "MaxUnpool2D": [Case({}, lambda: list(_pooled_with_indices(2, 6, 8, 3)), (2, 6, 8, 3))],
    "BedOfNails2D": [Case({}, lambda: _x(2, 3, 4, 3), (2, 6, 8, 3))],
    "PixelShuffle2D": [Case({"block_size": 2}, lambda: _x(2, 3, 4, 8), (2, 6, 8, 2))],
    "ChannelGroupSum": [Case({"groups": 2}, lambda: _x(2, 3, 4, 6), (2, 3, 4, 3))],
    "FusedBatchNormalization": [
        Case({"momentum": 0.9}, lambda: _x(2, 3, 4, 3), (2, 3, 4, 3), trainable=2, non_trainable=2),
    ],
    "ResizeConv2D": [
        Case({"filters": 4, "kernel_size": 3, "interpolation": "nearest"}, lambda: _x(2, 3, 4, 3), (2, 6, 8, 4),
             trainable=2, id="nearest"),
        Case({"filters": 4, "kernel_size": 3, "interpolation": "bilinear"}, lambda: _x(2, 3, 4, 3), (2, 6, 8, 4),
             trainable=2, id="bilinear"),
    ],
    "BilinearAdditiveConv2D": [
        Case({"filters": 4, "kernel_size": 3, "groups": 2}, lambda: _x(2, 3, 4, 6), (2, 6, 8, 4), trainable=2),
    ],
    "BedOfNailsConv2D": [Case({"filters": 4, "kernel_size": 3}, lambda: _x(2, 3, 4, 3), (2, 6, 8, 4), trainable=2)],
    "SubPixelConv2D": [
        Case({"filters": 4, "kernel_size": 3, "icnr": True}, lambda: _x(2, 3, 4, 3), (2, 6, 8, 4), trainable=2,
             id="icnr"),
        Case({"filters": 4, "kernel_size": 3, "icnr": False}, lambda: _x(2, 3, 4, 3), (2, 6, 8, 4), trainable=2,
             id="glorot"),
    ],
    "UnpoolConv2D": [Case({"channels": 3, "kernel_size": 1}, _unpool_conv_inputs, (2, 6, 8, 3), trainable=2)],
    # The gate is a hard decision: no gradient reaches the classifier through it (its own loss trains it).
    "EmptyGate": [Case({"threshold": 0.4}, lambda: [_x(2, 3, 4, 1), np.array([[1.0], [-1.0]], np.float32)],
                       (2, 3, 4, 1), non_trainable=1, differentiable=False)],
}

INITIALIZER_CASES: dict[str, list[dict]] = {
    "ICNR": [{"scale": 2, "initializer": {"class_name": "GlorotUniform", "config": {"seed": 3}}}],
}


def _registered_segnet_classes() -> dict[str, type]:
    """Layers and initializers registered with Keras under ``segnet>`` once every segnet.models module is imported."""
    for mod in pkgutil.walk_packages(segnet.models.__path__, "segnet.models."):
        importlib.import_module(mod.name)
    return {
        key.split(">", 1)[1]: obj
        for key, obj in keras.saving.get_custom_objects().items()
        if key.startswith("segnet>") and isinstance(obj, type)
        and issubclass(obj, keras.layers.Layer | keras.initializers.Initializer)
    }


def test_every_custom_layer_has_a_harness_case():
    covered = set(CASES) | set(INITIALIZER_CASES)
    assert not set(CASES) & set(INITIALIZER_CASES)
    assert sorted(set(CUSTOM_OBJECTS) - covered) == [], "add a harness case in tests/test_layers.py"
    assert sorted(covered - set(CUSTOM_OBJECTS)) == [], "a harness case for something CUSTOM_OBJECTS does not hold"
    registered = _registered_segnet_classes()
    assert sorted(set(registered) - set(CUSTOM_OBJECTS)) == [], "registered with Keras but not in CUSTOM_OBJECTS"
    for name, cls in CUSTOM_OBJECTS.items():
        assert registered.get(name) is cls, f"{name} is not registered with Keras as segnet>{name}"
    assert all(issubclass(CUSTOM_OBJECTS[n], keras.layers.Layer) for n in CASES)
    assert all(issubclass(CUSTOM_OBJECTS[n], keras.initializers.Initializer) for n in INITIALIZER_CASES)


@pytest.mark.parametrize("name", sorted(CUSTOM_OBJECTS))
def test_custom_object_passes_the_harness(name, tmp_path):
    cls = CUSTOM_OBJECTS[name]
    if issubclass(cls, keras.initializers.Initializer):
        assert name in INITIALIZER_CASES, f"no harness case for the initializer {name}"
        return  # see test_icnr_passes_the_harness
    assert name in CASES, f"no harness case for the layer {name}: add one to CASES in tests/test_layers.py"
    for i, case in enumerate(CASES[name]):
        keras.utils.set_random_seed(i)
        run_layer_test(
            cls,
            case.init_kwargs,
            case.inputs(),
            expected_output_shape=case.output_shape,
            expected_output_dtypes=case.output_dtypes,
            expected_num_trainable_weights=case.trainable,
            expected_num_non_trainable_weights=case.non_trainable,
            differentiable=case.differentiable,
            tmp_path=tmp_path,
        )


@pytest.mark.parametrize("kwargs", INITIALIZER_CASES["ICNR"])
def test_icnr_passes_the_harness(kwargs, tmp_path):
    shape = (3, 3, 2, 8)
    value = run_initializer_test(
        L.ICNR, kwargs, shape, tmp_path=tmp_path,
        layer_factory=lambda init: keras.layers.Conv2D(8, 3, padding="same", kernel_initializer=init),
    )
    sub = value[..., :2]  # one (3, 3, 2, C=2) kernel repeated for each of the 4 sub-pixel positions
    for k in range(4):
        np.testing.assert_array_equal(value[..., 2 * k: 2 * k + 2], sub)
    assert np.ptp(sub) > 0
    with pytest.raises(ValueError, match="not divisible"):
        L.ICNR(2)((3, 3, 2, 6))
