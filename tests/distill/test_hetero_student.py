"""The type-aware student (route b): typed inputs, one ONNX graph equal to torch, its registry, the
teacher's per-type states, and training through the one loop."""

import io

import numpy as np
import onnxruntime as ort
import pytest
import torch

from distill.data import load_dataset
from distill.errors import ConfigError
from distill.hetero_kd import TypedKD, TypedKDConfig, fit_typed
from distill.hetero_models import HeteroSAGE
from distill.hetero_student import (
    TypedSAGE,
    build_hetero_student,
    export_typed_onnx,
    mean_adjacency,
    typed_block,
)
from distill.objectives import supervised
from distill.train import Edges, TrainConfig, fit
from tests.distill.test_hetero import write_small_acm, write_tiny_acm

ONNX_TOLERANCE = 1e-4


@pytest.fixture
def tiny(tmp_path):
    return load_dataset(f"acm:{write_tiny_acm(tmp_path / 'acm')}")


@pytest.fixture
def small(tmp_path):
    return load_dataset(f"acm:{write_small_acm(tmp_path / 'acm')}")


def _student(ds, hidden=8, seed=0):
    torch.manual_seed(seed)
    return build_hetero_student("typed-sage", in_channels=ds.data.num_features, hidden_channels=hidden, num_layers=2,
                                out_channels=ds.num_classes, graph=ds.hetero).eval()


def test_inputs_are_named_per_type_and_relation(tiny):
    assert _student(tiny).schema.input_names() == [
        "x_paper", "x_author", "id_subject",
        "adj_paper__writes__author", "adj_author__written_by__paper", "adj_paper__has__subject",
        "adj_subject__of__paper"]


def test_mean_adjacency_averages_in_neighbours():
    # 0 -> 1, 2 -> 1, 1 -> 0; destination 2 has none.
    adj = mean_adjacency(torch.tensor([[0, 2, 1], [1, 1, 0]]), 3, 3).to_dense()
    assert adj.tolist() == [[0.0, 1.0, 0.0], [0.5, 0.0, 0.5], [0.0, 0.0, 0.0]]


def _onnx_logits(model_bytes: bytes, inputs: dict[str, torch.Tensor]) -> np.ndarray:
    session = ort.InferenceSession(model_bytes, providers=["CPUExecutionProvider"])
    return session.run(["logits"], {k: v.numpy() for k, v in inputs.items()})[0]


def test_onnx_on_a_typed_block_equals_torch_on_the_whole_graph(small):
    student = _student(small)
    with torch.no_grad():
        full = student(small.data.x)
    model = export_typed_onnx(student, typed_block(small.hetero, student.schema, torch.tensor([0, 5]), 2).inputs)
    # A block of another size through the same graph: every node count is dynamic.
    for targets in (torch.tensor([0, 5]), torch.tensor([7, 1, 30])):
        block = typed_block(small.hetero, student.schema, targets, 2)
        assert torch.equal(block.nodes["paper"][: len(targets)], targets)
        got = _onnx_logits(model, block.inputs)[: len(targets)]
        assert np.abs(got - full[targets].numpy()).max() <= ONNX_TOLERANCE
        schema = student.schema
        with torch.no_grad():
            torch_block = student.typed({t: block.inputs[schema.input_name(t)] for t in schema.node_types},
                                        {r: block.inputs[f"adj_{'__'.join(r)}"] for r in schema.edge_types})
        assert torch.allclose(torch_block.logits[: len(targets)], full[targets], atol=1e-5)


def test_the_onnx_graph_is_one_graph_of_plain_tensor_ops(tiny):
    import onnx

    student = _student(tiny)
    graph = onnx.load(io.BytesIO(export_typed_onnx(student, typed_block(tiny.hetero, student.schema,
                                                                        torch.tensor([0]), 2).inputs))).graph
    assert [i.name for i in graph.input] == student.schema.input_names()
    assert {n.op_type for n in graph.node} <= {"Gemm", "MatMul", "Add", "Relu", "Gather", "Div", "ReduceSum",
                                               "Abs", "Clip", "Constant", "Identity", "Transpose", "Max",
                                               "Shape", "Expand", "ConstantOfShape"}


def test_unknown_student_and_missing_graph_are_named(tiny):
    with pytest.raises(ConfigError, match="unknown type-aware student 'rgat'; choose one of \\['typed-sage'\\]"):
        build_hetero_student("rgat")
    with pytest.raises(ConfigError, match="needs a heterogeneous dataset"):
        TypedSAGE(4, 8, 2, 2)
    with pytest.raises(ConfigError, match="in_channels=7 but the graph's paper features have 4 columns"):
        TypedSAGE(7, 8, 2, 2, graph=tiny.hetero)


def test_the_teacher_exposes_every_types_state_per_layer_and_keeps_its_interface(small):
    teacher = HeteroSAGE(12, 8, 2, 3, graph=small.hetero).eval()
    out = teacher.run(small.data.x)
    assert [{t: tuple(h.shape) for t, h in layer.items()} for layer in out.typed] == \
        [{"paper": (90, 8), "author": (40, 8), "subject": (4, 8)}] * 2
    assert all(torch.equal(h, layer["paper"]) for h, layer in zip(out.hidden, out.typed, strict=True))
    assert torch.equal(teacher(small.data.x), out.logits)


def test_a_typed_student_trains_with_per_type_kd_through_fit(small):
    torch.manual_seed(0)
    teacher, data = HeteroSAGE(12, 16, 2, 3, graph=small.hetero), small.data
    budget = TrainConfig(epochs=60, patience=20, min_epochs=0)
    fit(teacher, data, Edges(data.edge_index), lambda out: supervised(out.logits, data.y, data.train_mask), budget,
        "teacher", progress=False)
    with torch.no_grad():
        signals = teacher.eval().run(data.x)
    student = _student(small, hidden=16)
    kd = TypedKD(TypedKDConfig(), student.schema.node_types, 16, 16)
    edges = {r: small.hetero[r].edge_index for r in small.hetero.edge_types}
    result = fit_typed(student, data, kd, signals, edges, budget, "test", progress=False)
    assert set(kd.last_terms) == {"response", "feature", "structure"}
    assert all(np.isfinite(v) for v in kd.last_terms.values())
    # The fixture's classes are written in the features and the author links: far above chance (1/3).
    assert result.best_val >= 0.8, result
