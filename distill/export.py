"""ONNX export of a student and the parity check that guards every bundle.

The exported graph takes `x` [n, F] raw features and, for graph students, `adj` [n, n] (the
policy's propagation matrix restricted to a cached neighbourhood) and returns `logits` [n, C].
Both dimensions are dynamic. Dense MatMul is used on purpose: onnxruntime runs it far faster than
the ScatterElements a PyG scatter exports to, and a cached neighbourhood is small by policy.
"""

from __future__ import annotations

import io
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnxruntime as ort
import torch
from torch import Tensor, nn

from distill.errors import ParityError
from distill.models import _Stack
from distill.policy import neighbourhood

OPSET = 17
TOLERANCE = 1e-4


class _Dense(nn.Module):
    def __init__(self, student: _Stack) -> None:
        super().__init__()
        self.student = student

    def forward(self, x: Tensor, adj: Tensor) -> Tensor:
        return self.student.forward_dense(x, adj)


class _FeaturesOnly(nn.Module):
    def __init__(self, student: _Stack) -> None:
        super().__init__()
        self.student = student

    def forward(self, x: Tensor) -> Tensor:
        return self.student.forward_dense(x, x.new_zeros(0, 0))


@dataclass(frozen=True)
class Parity:
    max_abs_diff: float
    nodes_checked: int
    tolerance: float


def input_names(graph_free: bool) -> list[str]:
    return ["x"] if graph_free else ["x", "adj"]


def export_onnx(student: _Stack, example_x: Tensor, example_adj: Tensor, graph_free: bool) -> bytes:
    """Serialise the eval-mode student (CPU) to ONNX bytes with dynamic node count."""
    student = student.cpu().eval()
    module: nn.Module = _FeaturesOnly(student) if graph_free else _Dense(student)
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


def check_parity(onnx_bytes: bytes, full_logits: Tensor, features: Tensor, prop_index: Tensor,
                 prop_weight: Tensor, k_hops: int, nodes: list[int], graph_free: bool,
                 tolerance: float = TOLERANCE) -> Parity:
    """Run onnxruntime on each node's cached neighbourhood and compare the node's logits with the
    torch student's full-graph logits [N, C]. Raises ParityError past `tolerance`."""
    session = ort.InferenceSession(onnx_bytes, providers=["CPUExecutionProvider"])
    worst = 0.0
    for node in nodes:
        subset, adj, local = neighbourhood(node, k_hops, prop_index, prop_weight, features.size(0))
        feeds = {"x": features[subset].numpy()}
        if not graph_free:
            feeds["adj"] = adj.numpy()
        out = session.run(["logits"], feeds)[0][local]
        worst = max(worst, float(np.abs(out - full_logits[node].cpu().numpy()).max()))
    if not worst <= tolerance:
        raise ParityError(
            f"ONNX student differs from torch by {worst:.3g} (> {tolerance}) on {len(nodes)} neighbourhoods"
        )
    return Parity(worst, len(nodes), tolerance)


def save(onnx_bytes: bytes, path: Path) -> None:
    path.write_bytes(onnx_bytes)
