"""ONNX export of the temporal student: onnxruntime on kernel blocks equals torch (dense and the
sparse training path), within 1e-4."""

from __future__ import annotations

import numpy as np
import torch

from bundle.temporal import TemporalPolicy, block
from distill.temporal.batch import collate
from distill.temporal.export import export_student, onnx_target_logits, torch_target_logits
from distill.temporal.models import TemporalStudent, make_model
from tests.distill.test_temporal_canary import random_store

TOLERANCE = 1e-4


def blocks() -> list:
    store = random_store(2)
    times = np.quantile(store.time, [0.1, 0.5, 0.9])
    return [block(store, v, float(t), TemporalPolicy(fanout=4, k_hops=2)) for v in range(6) for t in times]


def student() -> TemporalStudent:
    model = make_model("student", 3)
    assert isinstance(model, TemporalStudent)
    bs = blocks()
    model.norm.fit_to(torch.from_numpy(np.concatenate([b.x for b in bs])))
    with torch.no_grad():  # move LayerNorm off its identity init so parity covers it
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    return model.eval()


def test_onnx_matches_torch_on_kernel_blocks() -> None:
    model, bs = student(), blocks()
    assert len({len(b.nodes) for b in bs}) > 2  # several block sizes: the dynamic axes are exercised
    onnx_logits = onnx_target_logits(export_student(model, bs[0]), bs)
    dense = torch_target_logits(model, bs)
    assert np.abs(onnx_logits - dense).max() <= TOLERANCE


def test_sparse_batch_path_equals_dense_per_block() -> None:
    model, bs = student(), blocks()
    with torch.no_grad():
        batched = model.score(collate(bs)).numpy()
    assert np.abs(batched - torch_target_logits(model, bs)).max() <= 1e-5
