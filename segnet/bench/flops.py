"""FLOPs counted analytically from a model's traced forward graph (batch 1).

2×MACs of every Conv2D, transposed conv (``Conv2DBackpropInput``), depthwise conv and (batch) matmul;
element-wise ops, pooling, BN and scatters are not counted. Training ≈ 3× forward (forward + input and
weight grads).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def _static_shape(t) -> list[int] | None:
    s = t.shape
    return None if s.rank is None or None in s.as_list() else s.as_list()


def _op_macs(op) -> float:
    """Multiply-accumulates of one graph op (conv, transposed conv, depthwise conv, matmul); 0 otherwise."""
    t = op.type
    try:
        if t == "Conv2D":
            out, k = _static_shape(op.outputs[0]), _static_shape(op.inputs[1])
            return float(np.prod(out)) * k[0] * k[1] * k[2] if out and k else 0.0
        if t == "Conv2DBackpropInput":  # the forward op of a transposed convolution
            k, dy = _static_shape(op.inputs[1]), _static_shape(op.inputs[2])
            return float(np.prod(dy)) * k[0] * k[1] * k[2] if dy and k else 0.0
        if t == "DepthwiseConv2dNative":
            out, k = _static_shape(op.outputs[0]), _static_shape(op.inputs[1])
            return float(np.prod(out)) * k[0] * k[1] if out and k else 0.0
        if t in ("MatMul", "BatchMatMul", "BatchMatMulV2", "BatchMatMulV3"):
            a, out = _static_shape(op.inputs[0]), _static_shape(op.outputs[0])
            if not (a and out):
                return 0.0
            adj = op.get_attr("transpose_a") if t == "MatMul" else op.get_attr("adj_x")
            inner = a[-2] if adj else a[-1]
            return float(np.prod(out)) * inner
    except (ValueError, TypeError, IndexError):
        return 0.0
    return 0.0


def _graph_macs(graph, seen: set | None = None) -> float:
    seen = set() if seen is None else seen
    total = 0.0
    for op in graph.get_operations():
        total += _op_macs(op)
        if op.type in ("PartitionedCall", "StatefulPartitionedCall"):
            try:
                name = op.get_attr("f").name
                if name in seen:
                    continue
                seen.add(name)
                fn = graph._get_function(name)
                sub = getattr(fn, "graph", None)
                if sub is not None:
                    total += _graph_macs(sub, seen)
            except Exception:  # noqa: BLE001 - best effort: nested functions are rare in Keras 3 models
                pass
    return total


def forward_flops(model, input_shape: Sequence[int]) -> float:
    """FLOPs (2×MACs of conv/transposed conv/dense) of one forward pass on one image."""
    import tensorflow as tf

    fn = tf.function(lambda x: model(x, training=False))
    cf = fn.get_concrete_function(tf.TensorSpec([1, *input_shape], tf.float32))
    return 2.0 * _graph_macs(cf.graph)
