"""ONNX export, and the served parity check that guards every bundle."""

import numpy as np
import onnx
import pytest
import torch

from distill import export, policy, served
from distill.cli import main
from distill.data import load_dataset
from distill.errors import ParityError
from distill.models import build_student, mean_restart

TINY = ["--teacher-layers", "2", "--teacher-hidden", "16", "--student-hidden", "16", "--epochs", "20",
        "--patience", "5", "--quiet", "--dataset", "synthetic:nodes=200"]


@pytest.mark.parametrize("name", ["gcn", "sage", "sage-res", "ppr-mlp", "mlp"])
def test_export_is_dense_matmul_with_a_dynamic_node_axis(name):
    d = load_dataset("synthetic:nodes=300,features=6,seed=2").data
    student, kind = build_student(name, in_channels=6, hidden_channels=16, num_layers=2, out_channels=3)
    pol = policy.make_policy(5, 0 if kind == "none" else 2, kind, 0, degree_input=student.takes_degree,
                             mean_input=student.takes_mean, mean_restart=mean_restart(name))
    sg = policy.student_graph(d.edge_index, d.num_nodes, pol, x=d.x)
    nodes, adj = policy.neighbourhood(sg, 0)
    blob = export.export_onnx(student, sg.inputs(d.x)[torch.from_numpy(nodes)], torch.from_numpy(adj), kind == "none")
    model = onnx.load_from_string(blob)
    assert [i.name for i in model.graph.input] == export.input_names(kind == "none")
    dims = [dim.dim_param for dim in model.graph.input[0].type.tensor_type.shape.dim]
    assert dims[0] == "nodes"  # dynamic node count
    ops = {n.op_type for n in model.graph.node}
    assert not ops & {"ScatterElements", "ScatterND"}  # MatMul only: fast in onnxruntime
    assert not student.training  # handed back in eval mode: whoever predicts next gets no dropout


def test_served_check_detects_a_student_that_differs_from_torch(tmp_path):
    out = tmp_path / "b"
    assert main(["run", "--out", str(out), *TINY]) == 0
    service = served.open_service(out)
    n = service.scorer.store.num_nodes
    truth = served.score(service, np.arange(n)).logits
    y, mask = np.arange(n) % 3, np.zeros(n, dtype=bool)
    mask[:10] = True
    ok = served.check(service, truth, y, mask, mask, seed=0)
    assert ok.parity.max_abs_diff == 0.0 and ok.parity.nodes_checked >= 10
    with pytest.raises(ParityError, match="differs from torch by 0.001"):
        served.check(service, truth + 1e-3, y, mask, mask, seed=0)
    none = served.score(service, np.zeros(0, dtype=np.int64))  # e.g. a refresh sharing no validation node
    assert none.logits.shape == none.probabilities.shape == (0, truth.shape[1])
