"""The synthetic heterogeneous fraud graph: deterministic per seed, validated options, typed shapes and
masks, its meta-path view on a hand-checkable graph, and `distill run` / `select` end to end."""

import json

import numpy as np
import pytest
import torch
from torch_geometric.data import HeteroData

from bundle.files import open_bundle
from distill.cli import main
from distill.config import RunConfig
from distill.data import load_dataset
from distill.errors import DatasetError
from distill.hetero import metapath_edges, target_type
from distill.hetero_models import HeteroSAGE
from distill.hetero_student import TypedSchema, build_hetero_student
from distill.hetero_synthetic import HeteroSyntheticConfig, generate
from distill.teacher import teacher_families

SMALL = "transactions=200,users=60,devices=40,rings=3,fraud_rate=0.1,train_share=0.2"
TINY_RUN = ["--teacher-layers", "2", "--teacher-hidden", "16", "--epochs", "15", "--patience", "5", "--quiet"]


def _small(seed: int = 0) -> HeteroData:
    return generate(HeteroSyntheticConfig.parse(f"{SMALL},seed={seed}"))


def test_same_seed_same_graph_other_seed_other_graph():
    a, b, c = _small(4), _small(4), _small(5)
    for key in ("x", "y", "train_mask", "test_mask"):
        assert torch.equal(a["transaction"][key], b["transaction"][key])
    assert all(torch.equal(a[r].edge_index, b[r].edge_index) for r in a.edge_types)
    assert torch.equal(a["user"].x, b["user"].x)
    assert not torch.equal(a["transaction"].x, c["transaction"].x)
    assert not torch.equal(a["transaction", "uses", "device"].edge_index, c["transaction", "uses", "device"].edge_index)


@pytest.mark.parametrize(("option", "needle"), [
    ("colour=3", "key one of ['camouflage', 'devices'"),
    ("fraud_rate=0.9", "fraud_rate=0.9 is out of range"),
    ("users=10", "users=10 is out of range"),
    ("seed=x", "seed='x' is not a int"),
    ("rings", "bad option 'rings'"),
])
def test_bad_options_are_named(option, needle):
    with pytest.raises(DatasetError, match=None) as err:
        load_dataset(f"synthetic-hetero:{option}")
    assert needle in str(err.value)


def test_a_bad_option_exits_2_naming_it(tmp_path, capsys):
    assert main(["run", "--dataset", "synthetic-hetero:colour=3", "--quiet", "--out", str(tmp_path / "b")]) == 2
    assert "colour=3" in capsys.readouterr().err


def test_types_shapes_links_and_stratified_masks():
    cfg = HeteroSyntheticConfig.parse(SMALL)
    g = generate(cfg)
    assert g.node_types == ["transaction", "user", "device"] and target_type(g) == "transaction"
    assert g["transaction"].x.shape == (200, 6) and g["user"].x.shape == (60, 2) and g["device"].x.shape == (40, 2)
    tx = g["transaction"]
    assert int(tx.y.sum()) == 20  # fraud_rate x transactions
    masks = torch.stack([tx.train_mask, tx.val_mask, tx.test_mask]).int()
    assert torch.all(masks.sum(0) == 1)
    assert int(tx.y[tx.train_mask].sum()) == 4 and int(tx.train_mask.sum()) == 40  # 20 % of each class
    made = g["user", "makes", "transaction"].edge_index
    uses = g["transaction", "uses", "device"].edge_index
    assert torch.equal(made[1], torch.arange(200)) and torch.equal(uses[0], torch.arange(200))  # one each
    assert made[0].max() < 60 and uses[1].max() < 40
    assert torch.equal(g["transaction", "made_by", "user"].edge_index, made.flip(0))
    assert torch.equal(g["device", "used_by", "transaction"].edge_index, uses.flip(0))
    assert TypedSchema.of(g).widths == (6, 2, 2)


def test_fraud_shares_users_and_devices_more_than_legit_does():
    g = generate(HeteroSyntheticConfig())
    y = g["transaction"].y.numpy()
    device = g["transaction", "uses", "device"].edge_index[1].numpy()
    # How often a transaction's device also served fraud elsewhere: the rings' structural signal.
    fraud_on = np.bincount(device, weights=y, minlength=g["device"].num_nodes)
    other_fraud = fraud_on[device] - y
    assert (other_fraud[y == 1] > 0).mean() > 0.9 > 0.2 > (other_fraud[y == 0] > 0).mean()
    assert 0.05 <= y.mean() <= 0.1


def test_the_meta_path_view_links_transactions_sharing_a_user_or_device():
    """4 transactions: 0 and 1 by user 0, 2 by user 1, 3 by user 2; 1 and 2 on device 0, 0 and 3 on
    devices of their own. Via users: 0-1; via devices: 1-2."""
    g = HeteroData()
    g["transaction"].x, g["transaction"].y = torch.zeros(4, 1), torch.zeros(4, dtype=torch.long)
    g["user"].x, g["device"].num_nodes = torch.zeros(3, 1), 3
    g["transaction", "made_by", "user"].edge_index = torch.tensor([[0, 1, 2, 3], [0, 0, 1, 2]])
    g["transaction", "uses", "device"].edge_index = torch.tensor([[0, 1, 2, 3], [1, 0, 0, 2]])
    pairs = lambda e: sorted(map(tuple, e.T.tolist()))  # noqa: E731
    assert pairs(metapath_edges(g, "user", "transaction")) == [(0, 1), (1, 0)]
    assert pairs(metapath_edges(g, "device", "transaction")) == [(1, 2), (2, 1)]
    with pytest.raises(DatasetError, match="no relation from 'user' to 'device'"):
        metapath_edges(g, "device", "user")


def test_the_dataset_serves_the_union_of_both_meta_paths():
    ds = load_dataset(f"synthetic-hetero:{SMALL}")
    g = ds.hetero
    user = g["transaction", "made_by", "user"].edge_index[1]
    device = g["transaction", "uses", "device"].edge_index[1]
    shared = (user[:, None] == user[None]) | (device[:, None] == device[None])
    shared.fill_diagonal_(False)
    expected = shared.nonzero().T
    assert torch.equal(ds.data.edge_index, expected)  # coalesced: sorted by source, then target
    assert torch.equal(ds.data.x, g["transaction"].x) and ds.class_names == ("legit", "fraud")
    assert ds.source["config"]["transactions"] == 200 and ds.source["kind"] == "synthetic-hetero"
    assert teacher_families(RunConfig(), ds)[-1] == "hetero-sage"


def test_type_aware_models_find_the_labelled_type_themselves():
    g = _small()
    student = build_hetero_student("typed-sage", in_channels=6, hidden_channels=8, num_layers=2, out_channels=2,
                                   graph=g)
    assert student.schema.target == "transaction" and student(g["transaction"].x).shape == (200, 2)
    assert HeteroSAGE(6, 8, 2, 2, graph=g)(g["transaction"].x).shape == (200, 2)
    g["user"].y = torch.zeros(60, dtype=torch.long)
    with pytest.raises(DatasetError, match="exactly one labelled node type"):
        target_type(g)


def test_distill_run_and_select_end_to_end(tmp_path):
    out = tmp_path / "bundle"
    spec = f"synthetic-hetero:{SMALL}"
    assert main(["run", "--dataset", spec, "--teacher", "hetero-sage", "--student", "gcn", *TINY_RUN,
                 "--out", str(out)]) == 0
    manifest = open_bundle(out).manifest
    assert manifest.metrics["teacher"]["family"] == "hetero-sage" and manifest.dataset.name == "synthetic-hetero"
    assert manifest.parity is not None and manifest.parity.max_abs_diff <= manifest.parity.tolerance
    chosen = tmp_path / "selected"
    assert main(["select", "--dataset", spec, "--teacher", "hetero-sage", *TINY_RUN, "--out", str(chosen),
                 "--latency-budget-ms", "1000", "--grid", "gcn:2:8,mlp:2:8", "--calls", "100"]) == 0
    assert json.loads((chosen / "select.json").read_text())["budget_ms"] == 1000
