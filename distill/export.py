"""ONNX export of a student.

The exported graph takes `x` [n, F] raw features and, for graph students, `adj` [n, n] (the
policy's propagation matrix restricted to a cached neighbourhood) and returns `logits` [n, C].
Both dimensions are dynamic. Dense MatMul is used on purpose: onnxruntime runs it far faster than
the ScatterElements a PyG scatter exports to, and a cached neighbourhood is small by policy.
Whether the export is right is checked on the written bundle, through the service's own code
(distill/served.py).
"""

from __future__ import annotations

import io
import warnings

import torch
from torch import Tensor, nn

from distill.models import LayerStack

OPSET = 17


class _Dense(nn.Module):
    def __init__(self, student: LayerStack) -> None:
        super().__init__()
        self.student = student

    def forward(self, x: Tensor, adj: Tensor) -> Tensor:
        return self.student.forward_dense(x, adj)


class _FeaturesOnly(nn.Module):
    def __init__(self, student: LayerStack) -> None:
        super().__init__()
        self.student = student

    def forward(self, x: Tensor) -> Tensor:
        return self.student.forward_dense(x, x.new_zeros(0, 0))


def input_names(graph_free: bool) -> list[str]:
    return ["x"] if graph_free else ["x", "adj"]


def export_onnx(student: LayerStack, example_x: Tensor, example_adj: Tensor, graph_free: bool) -> bytes:
    """Serialise the eval-mode student (CPU) to ONNX bytes with dynamic node count.
    example_x [n, F], example_adj [n, n] (ignored for graph-free students)."""
    student = student.cpu().eval()
    # The exporter restores the wrapper's mode afterwards, recursively: a fresh wrapper (training mode)
    # would hand the student back in training mode, dropout on, to whoever predicts with it next.
    module: nn.Module = (_FeaturesOnly(student) if graph_free else _Dense(student)).eval()
    args: tuple[Tensor, ...] = (example_x,) if graph_free else (example_x, example_adj)
    names = input_names(graph_free)
    axes = {"x": {0: "nodes"}, "adj": {0: "nodes", 1: "nodes"}, "logits": {0: "nodes"}}
    buf = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        # The legacy TorchScript exporter: the graph is plain MatMul/Gemm, and it keeps the
        # named dynamic axes exactly as written (dynamo's symbolic shapes merge `nodes` oddly).
        torch.onnx.export(
            module, args, buf, input_names=names, output_names=["logits"],
            dynamic_axes={k: v for k, v in axes.items() if k in names + ["logits"]},
            opset_version=OPSET, dynamo=False,
        )
    return buf.getvalue()
