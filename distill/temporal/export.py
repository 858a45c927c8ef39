"""ONNX export of the temporal student: inputs x float32 [n, F] (bundle.temporal.node_features as of
t, raw) and adj float32 [R, n, n] (TemporalBlock.adjacency()), output logits [n, 2]; the target's
logits are row 0. Both node dimensions are dynamic."""

from __future__ import annotations

import io
import warnings
from collections.abc import Sequence

import numpy as np
import onnxruntime as ort
import torch
from torch import Tensor, nn

from bundle.temporal import TemporalBlock
from distill.export import OPSET
from distill.temporal.models import TemporalStudent


class _Dense(nn.Module):
    def __init__(self, student: TemporalStudent) -> None:
        super().__init__()
        self.student = student

    def forward(self, x: Tensor, adj: Tensor) -> Tensor:
        return self.student(x, adj)


def export_student(student: TemporalStudent, example: TemporalBlock) -> bytes:
    """Serialise the eval-mode student (CPU) to ONNX bytes; `example` only fixes the traced shapes."""
    student = student.cpu().eval()
    args = (torch.from_numpy(example.x), torch.from_numpy(example.adjacency()))
    buf = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            _Dense(student), args, buf, input_names=["x", "adj"], output_names=["logits"],
            dynamic_axes={"x": {0: "nodes"}, "adj": {1: "nodes", 2: "nodes"}, "logits": {0: "nodes"}},
            opset_version=OPSET, dynamo=False,
        )
    return buf.getvalue()


def onnx_target_logits(model: bytes, blocks: Sequence[TemporalBlock]) -> np.ndarray:
    """onnxruntime logits of each block's target, float32 [m, 2], one call per block (as served)."""
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    session = ort.InferenceSession(model, options, providers=["CPUExecutionProvider"])
    rows = [session.run(["logits"], {"x": b.x, "adj": b.adjacency()})[0][0] for b in blocks]
    return np.stack(rows).astype(np.float32) if rows else np.zeros((0, 2), np.float32)


@torch.no_grad()
def torch_target_logits(student: TemporalStudent, blocks: Sequence[TemporalBlock]) -> np.ndarray:
    """Eval-mode torch logits of each block's target on the dense path, float32 [m, 2]."""
    student.eval()
    rows = [student(torch.from_numpy(b.x), torch.from_numpy(b.adjacency()))[0] for b in blocks]
    return torch.stack(rows).numpy() if rows else np.zeros((0, 2), np.float32)
