import onnx
import pytest

from distill import export, policy
from distill.data import load_dataset
from distill.errors import ParityError
from distill.models import build_student


@pytest.mark.parametrize("name", ["gcn", "sage", "mlp"])
def test_onnx_parity_on_held_out_neighbourhoods(name):
    d = load_dataset("synthetic:nodes=300,features=6,seed=2").data
    student, kind = build_student(name, in_channels=6, hidden_channels=16, num_layers=2, out_channels=3)
    student.eval()
    k = 0 if kind == "none" else 2
    ei, w = policy.propagation(policy.prune(d.edge_index, d.num_nodes, 5, 0), d.num_nodes, kind)
    full = student(d.x, ei, w).detach()
    subset, adj, _ = policy.neighbourhood(0, k, ei, w, d.num_nodes)
    blob = export.export_onnx(student, d.x[subset], adj, kind == "none")
    model = onnx.load_from_string(blob)
    assert [i.name for i in model.graph.input] == export.input_names(kind == "none")
    dims = [dim.dim_param for dim in model.graph.input[0].type.tensor_type.shape.dim]
    assert dims[0] == "nodes"  # dynamic node count
    ops = {n.op_type for n in model.graph.node}
    assert not ops & {"ScatterElements", "ScatterND"}  # MatMul only: fast in onnxruntime
    parity = export.check_parity(blob, full, d.x, ei, w, k, list(range(1, 40)), kind == "none")
    assert parity.max_abs_diff <= export.TOLERANCE and parity.nodes_checked == 39


def test_parity_failure_is_detected():
    d = load_dataset("synthetic:nodes=300,features=6,seed=2").data
    student, kind = build_student("gcn", in_channels=6, hidden_channels=16, num_layers=2, out_channels=3)
    student.eval()
    ei, w = policy.propagation(policy.prune(d.edge_index, d.num_nodes, 5, 0), d.num_nodes, kind)
    subset, adj, _ = policy.neighbourhood(0, 2, ei, w, d.num_nodes)
    blob = export.export_onnx(student, d.x[subset], adj, False)
    wrong = student(d.x, ei, w).detach() + 1e-3
    with pytest.raises(ParityError, match="differs"):
        export.check_parity(blob, wrong, d.x, ei, w, 2, [1, 2, 3], False)
