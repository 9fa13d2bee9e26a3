"""One test harness for every custom Keras layer (in the spirit of keras-hub's ``run_layer_test``).

:func:`run_layer_test` takes a layer class, its ``__init__`` arguments and example inputs (a batch), and checks:

* **call**: eager and symbolic (``keras.Input``) calls agree on output shapes and dtypes, which are the expected
  ones; the layer's weights are the expected number, trainable and not, all float32;
* **config**: ``get_config()`` holds every ``__init__`` argument (with the given values); ``from_config`` of it
  gives the same config and, with the same weights, the same output;
* **serialization**: ``keras.saving.serialize_keras_object`` → JSON → ``deserialize_keras_object`` (no
  ``custom_objects``: the layer is registered) gives the same class, config and output; a tiny model holding
  the layer, saved as ``.keras`` and loaded with ``keras.models.load_model``, gives identical outputs;
* **training step**: one gradient step changes every trainable weight (each gets a non-zero gradient); a layer
  without weights passes a finite, non-zero gradient to its (float) inputs, unless it is not differentiable;
* **float16**: built with ``dtype="mixed_float16"``, the layer computes in float16 (float outputs are float16,
  integer outputs unchanged, eager and symbolic agree), keeps float32 variables and gives finite outputs.

:func:`run_initializer_test` does the same for a custom initializer (config, serialization, a saved model
whose layer uses it, float16 values). Each check is its own function, usable alone.
"""

from __future__ import annotations

import inspect
import json
from collections.abc import Sequence
from pathlib import Path

import keras
import numpy as np
import tensorflow as tf

TOLERANCE = {"rtol": 1e-6, "atol": 1e-6}


def _as_list(x) -> list:
    return list(x) if isinstance(x, list | tuple) else [x]


def _unwrap(xs: list):
    return xs if len(xs) > 1 else xs[0]


def _numpy(outputs) -> list[np.ndarray]:
    return [np.asarray(keras.ops.convert_to_numpy(o)) for o in _as_list(outputs)]


def _dtype(t) -> str:
    return keras.backend.standardize_dtype(t.dtype)


def _is_float(dtype) -> bool:
    return np.issubdtype(np.dtype(keras.backend.standardize_dtype(dtype)), np.floating)


def _call(layer, data, training: bool = False):
    return layer(_unwrap(list(data)), training=training)


def _assert_same_outputs(a, b, what: str) -> None:
    a, b = _numpy(a), _numpy(b)
    assert len(a) == len(b), f"{what}: {len(a)} outputs vs {len(b)}"
    for i, (x, y) in enumerate(zip(a, b, strict=True)):
        assert x.shape == y.shape and x.dtype == y.dtype, f"{what}, output {i}: {x.shape} {x.dtype} vs {y.shape} {y.dtype}"
        np.testing.assert_allclose(x, y, **TOLERANCE, err_msg=f"{what}, output {i}")


def _build(layer_cls, init_kwargs: dict, data, **extra):
    layer = layer_cls(**init_kwargs, **extra)
    _call(layer, data)
    return layer


def _copy_weights(src, dst) -> None:
    assert len(src.weights) == len(dst.weights)
    dst.set_weights(src.get_weights())


def _tiny_model(layer, data) -> keras.Model:
    inputs = [keras.Input(shape=a.shape[1:], dtype=str(a.dtype), name=f"in{i}") for i, a in enumerate(data)]
    return keras.Model(_unwrap(inputs), layer(_unwrap(inputs)))


# ----------------------------------------------------------------------------------------- the checks


def check_call_and_weights(layer_cls, init_kwargs, data, expected_output_shape, expected_output_dtypes,
                           trainable: int, non_trainable: int) -> None:
    layer = _build(layer_cls, init_kwargs, data)
    eager = _numpy(_call(layer, data))
    shapes = [tuple(s) for s in (expected_output_shape if isinstance(expected_output_shape, list)
                                 else [expected_output_shape])]
    assert [o.shape for o in eager] == shapes, f"{layer_cls.__name__}: output shapes {[o.shape for o in eager]}"
    assert [str(o.dtype) for o in eager] == list(expected_output_dtypes), [str(o.dtype) for o in eager]
    symbolic = _as_list(_tiny_model(layer_cls(**init_kwargs), data).outputs)
    assert [tuple(s.shape)[1:] for s in symbolic] == [s[1:] for s in shapes], "symbolic shapes differ from eager"
    assert [_dtype(s) for s in symbolic] == list(expected_output_dtypes), "symbolic dtypes differ from eager"
    assert len(layer.trainable_weights) == trainable, [w.path for w in layer.trainable_weights]
    assert len(layer.non_trainable_weights) == non_trainable, [w.path for w in layer.non_trainable_weights]
    assert len(layer.weights) == trainable + non_trainable
    assert all(_dtype(w) == "float32" for w in layer.weights)


def check_config_round_trip(layer_cls, init_kwargs, data) -> None:
    layer = _build(layer_cls, init_kwargs, data)
    config = layer.get_config()
    json.dumps(config)  # plain values only
    params = [p for p in inspect.signature(layer_cls.__init__).parameters.values()
              if p.name != "self" and p.kind not in (p.VAR_KEYWORD, p.VAR_POSITIONAL)]
    missing = [p.name for p in params if p.name not in config]
    assert not missing, f"{layer_cls.__name__}.get_config() lacks __init__ arguments {missing}"
    for key, value in init_kwargs.items():
        assert config[key] == value, (key, config[key], value)
    clone = layer_cls.from_config(config)
    assert type(clone) is layer_cls and clone.get_config() == config
    _call(clone, data)
    _copy_weights(layer, clone)
    _assert_same_outputs(_call(layer, data), _call(clone, data), "from_config(get_config())")


def check_serialization(layer_cls, init_kwargs, data, tmp_path: Path) -> None:
    layer = _build(layer_cls, init_kwargs, data)
    serialized = keras.saving.serialize_keras_object(layer)
    assert serialized["registered_name"] == f"segnet>{layer_cls.__name__}", serialized["registered_name"]
    revived = keras.saving.deserialize_keras_object(json.loads(json.dumps(serialized)))
    assert type(revived) is layer_cls and revived.get_config() == layer.get_config()
    _call(revived, data)
    _copy_weights(layer, revived)
    _assert_same_outputs(_call(layer, data), _call(revived, data), "serialize/deserialize_keras_object")

    model = _tiny_model(layer_cls(**init_kwargs, name="under_test"), data)
    path = Path(tmp_path) / f"{layer_cls.__name__}.keras"
    model.save(path)
    loaded = keras.models.load_model(path)
    assert type(loaded.get_layer("under_test")) is layer_cls
    assert loaded.get_layer("under_test").get_config() == model.get_layer("under_test").get_config()
    _assert_same_outputs(model(_unwrap(list(data))), loaded(_unwrap(list(data))), ".keras save/load")


def check_training_step(layer_cls, init_kwargs, data, differentiable: bool = True) -> None:
    layer = _build(layer_cls, init_kwargs, data)
    inputs = [tf.constant(a) for a in data]
    rng = np.random.default_rng(0)
    with tf.GradientTape() as tape:
        float_inputs = [x for x in inputs if x.dtype.is_floating]
        for x in float_inputs:
            tape.watch(x)
        outputs = [o for o in _as_list(_call(layer, inputs, training=True)) if _is_float(o.dtype)]
        loss = tf.add_n([tf.reduce_sum(tf.cast(o, tf.float32) * rng.standard_normal(o.shape).astype("float32"))
                         for o in outputs])
    weights = layer.trainable_weights
    grads = tape.gradient(loss, [*weights, *float_inputs])
    w_grads, x_grads = grads[: len(weights)], grads[len(weights):]
    if not weights:
        if differentiable:
            assert x_grads and all(g is not None for g in x_grads), "no gradient reaches the inputs"
            assert all(np.all(np.isfinite(g)) and np.any(np.asarray(g) != 0) for g in x_grads)
        return
    for w, g in zip(weights, w_grads, strict=True):
        assert g is not None and np.all(np.isfinite(g)) and np.any(np.asarray(g) != 0), f"no gradient for {w.path}"
    before = [np.asarray(w).copy() for w in weights]
    keras.optimizers.SGD(learning_rate=0.1).apply(w_grads, weights)
    for w, b in zip(weights, before, strict=True):
        assert not np.allclose(np.asarray(w), b), f"one training step left {w.path} unchanged"


def check_mixed_float16(layer_cls, init_kwargs, data, expected_output_dtypes) -> None:
    layer = _build(layer_cls, init_kwargs, data, dtype="mixed_float16")
    assert layer.compute_dtype == "float16" and layer.variable_dtype == "float32"
    assert all(_dtype(w) == "float32" for w in layer.weights), "variables must stay float32"
    want = ["float16" if _is_float(d) else d for d in expected_output_dtypes]
    eager = _numpy(_call(layer, data))
    assert [str(o.dtype) for o in eager] == want, [str(o.dtype) for o in eager]
    symbolic = _as_list(_tiny_model(layer_cls(**init_kwargs, dtype="mixed_float16"), data).outputs)
    assert [_dtype(s) for s in symbolic] == want, "symbolic dtypes differ from eager under mixed_float16"
    assert all(np.all(np.isfinite(o)) for o in eager if _is_float(o.dtype))
    # close to the float32 layer with the same weights
    ref = _build(layer_cls, init_kwargs, data)
    _copy_weights(layer, ref)
    for a, b in zip(eager, _numpy(_call(ref, data)), strict=True):
        np.testing.assert_allclose(a.astype("float64"), b.astype("float64"), rtol=2e-2, atol=2e-2)


# ----------------------------------------------------------------------------------------- entry points


def run_layer_test(
    layer_cls,
    init_kwargs: dict,
    input_data: np.ndarray | Sequence[np.ndarray],
    *,
    expected_output_shape: tuple | list[tuple],
    expected_output_dtypes: Sequence[str] = ("float32",),
    expected_num_trainable_weights: int = 0,
    expected_num_non_trainable_weights: int = 0,
    differentiable: bool = True,
    tmp_path: Path,
) -> None:
    """Every check above on ``layer_cls(**init_kwargs)`` called on ``input_data`` (one array or a list)."""
    data = [np.asarray(a) for a in _as_list(input_data)]
    check_call_and_weights(layer_cls, init_kwargs, data, expected_output_shape, expected_output_dtypes,
                           expected_num_trainable_weights, expected_num_non_trainable_weights)
    check_config_round_trip(layer_cls, init_kwargs, data)
    check_serialization(layer_cls, init_kwargs, data, tmp_path)
    check_training_step(layer_cls, init_kwargs, data, differentiable=differentiable)
    check_mixed_float16(layer_cls, init_kwargs, data, expected_output_dtypes)


def run_initializer_test(init_cls, init_kwargs: dict, shape: tuple, *, tmp_path: Path, layer_factory) -> np.ndarray:
    """Config and serialization round trips of an initializer, a saved model using it, float16 values.

    ``init_kwargs`` must make it deterministic (a seeded inner initializer); ``layer_factory(initializer)``
    returns a layer whose kernel (``shape``) it initialises. Returns the initial value, for further checks.
    """
    init = init_cls(**init_kwargs)
    value = np.asarray(init(shape, dtype="float32"))
    assert value.shape == tuple(shape) and value.dtype == np.float32 and np.all(np.isfinite(value))
    np.testing.assert_array_equal(np.asarray(init(shape, dtype="float32")), value)  # seeded: deterministic

    config = init.get_config()
    json.dumps(config)
    clone = init_cls.from_config(config)
    assert type(clone) is init_cls and clone.get_config() == config
    np.testing.assert_array_equal(np.asarray(clone(shape, dtype="float32")), value)

    serialized = keras.saving.serialize_keras_object(init)
    assert serialized["registered_name"] == f"segnet>{init_cls.__name__}", serialized["registered_name"]
    revived = keras.saving.deserialize_keras_object(json.loads(json.dumps(serialized)))
    assert type(revived) is init_cls and revived.get_config() == config
    np.testing.assert_array_equal(np.asarray(revived(shape, dtype="float32")), value)
    assert type(keras.initializers.get(serialized)) is init_cls

    half = init(shape, dtype="float16")  # (float16 draws another random stream: same dtype and range, not values)
    assert _dtype(half) == "float16" and tuple(half.shape) == tuple(shape)
    assert np.all(np.isfinite(half)) and np.abs(np.asarray(half)).max() <= np.abs(value).max() * 1.5

    layer = layer_factory(init_cls(**init_kwargs))
    x = np.random.default_rng(0).standard_normal((1, 4, 4, shape[-2])).astype("float32")
    model = _tiny_model(layer, [x])
    np.testing.assert_array_equal(np.asarray(layer.kernel), value)  # it initialised the kernel
    path = Path(tmp_path) / f"{init_cls.__name__}.keras"
    model.save(path)
    loaded = keras.models.load_model(path)
    reloaded_init = loaded.layers[-1].kernel_initializer
    assert type(reloaded_init) is init_cls and reloaded_init.get_config() == config
    _assert_same_outputs(model(x), loaded(x), ".keras save/load")
    return value
