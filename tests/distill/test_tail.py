"""Tail-class logit adjustment: chosen on validation, shipped inside the ONNX student."""

import json

import numpy as np
import pytest
import torch
from torch_geometric.data import Data

from distill import tail
from distill.cli import main
from distill.metrics import evaluate
from distill.models import build_student


def _binary(n: int = 400, seed: int = 0) -> tuple[torch.Tensor, Data]:
    """A 10 % positive task whose logits rank well (AUROC ~0.9) but whose argmax rarely says positive."""
    g = torch.Generator().manual_seed(seed)
    y = (torch.rand(n, generator=g) < 0.1).long()
    score = y.float() * 1.5 + torch.randn(n, generator=g) - 2.0
    logits = torch.stack([torch.zeros(n), score], dim=1)
    idx = torch.randperm(n, generator=g)
    masks = [torch.zeros(n, dtype=torch.bool) for _ in range(3)]
    for m, part in zip(masks, idx.chunk(3), strict=True):
        m[part] = True
    return logits, Data(y=y, train_mask=masks[0], val_mask=masks[1], test_mask=masks[2], num_nodes=n)


def test_prior_has_a_pseudo_count_so_an_unseen_class_is_not_log_zero():
    y = torch.tensor([0, 0, 0, 1])
    prior = tail.class_prior(y, torch.ones(4, dtype=torch.bool), 3)
    assert prior.tolist() == pytest.approx([4 / 7, 2 / 7, 1 / 7])


def test_binary_adjustment_raises_rare_recall_and_keeps_the_ranking():
    logits, data = _binary()
    adj = tail.choose(logits, data)
    assert adj.tau > 0
    assert adj.val_balanced_after > adj.val_balanced_before
    assert adj.val_metric_after == pytest.approx(adj.val_metric_before)  # AUROC: same ranking
    before = evaluate(torch.softmax(logits, 1).numpy(), data.y.numpy())
    after = evaluate(torch.softmax(logits + torch.tensor(adj.offsets), 1).numpy(), data.y.numpy())
    assert after["per_class_recall"][1] > before["per_class_recall"][1]
    assert after["auroc"] == pytest.approx(before["auroc"])
    assert sum(adj.offsets) == pytest.approx(0.0, abs=1e-6)


def test_no_adjustment_when_nothing_gains_on_validation():
    logits, data = _binary()
    perfect = torch.stack([torch.zeros(len(data.y)), data.y.float() * 20 - 10], dim=1)  # every class at recall 1
    adj = tail.choose(perfect, data)
    assert adj.tau == 0.0 and adj.offsets == [0.0, 0.0]


def test_offsets_are_part_of_the_exported_maths():
    student, _ = build_student("gcn", in_channels=4, hidden_channels=8, num_layers=2, out_channels=3)
    student.eval()
    x, adj = torch.randn(5, 4), torch.full((5, 5), 0.2)
    plain = student.forward_dense(x, adj)
    student.class_offset = torch.tensor([-1.0, 0.0, 1.0])
    assert torch.allclose(student.forward_dense(x, adj), plain + student.class_offset)
    edge_index = torch.tensor([[j for i in range(5) for j in range(5)], [i for i in range(5) for _ in range(5)]])
    sparse = student(x, edge_index, torch.full((25,), 0.2))
    assert torch.allclose(sparse, plain + student.class_offset, atol=1e-5)


def test_with_a_floor_the_smallest_tau_that_reaches_it_is_kept():
    logits, data = _binary()
    free = tail.choose(logits, data)
    reached = tail.choose(logits, data, floor=free.val_rare_after)
    assert 0 < reached.tau <= free.tau and reached.val_rare_after >= free.val_rare_after
    smaller = [t for t in tail.TAUS if t < reached.tau]
    assert all(tail.choose(logits, data, floor=free.val_rare_after, taus=(t,)).val_rare_after < reached.floor
               for t in smaller)  # no smaller tau reaches the floor
    assert tail.choose(logits, data, floor=0.0).tau == 0.0  # already at the floor: nothing to move
    best = tail.choose(logits, data, floor=1.01)  # out of reach: the highest rare recall
    assert best.val_rare_after == max(tail.choose(logits, data, floor=1.01, taus=(t,)).val_rare_after
                                      for t in tail.TAUS)


def test_the_prior_counts_validation_labels_because_a_training_split_may_be_balanced():
    y = torch.tensor([0, 1, 0, 1, 0, 0, 0, 1])
    train = torch.tensor([True, True, False, True, False, False, False, False])  # 1:2 in training
    val = ~train
    data = Data(y=y, train_mask=train, val_mask=val, num_nodes=8)
    assert tail.labelled_prior(data, 2).tolist() == pytest.approx([6 / 10, 4 / 10])


def test_tiny_imbalanced_graph_ships_the_adjustment_and_serves_it(tmp_path, monkeypatch):
    """End to end on a 4 %-rare, weak-signal graph with the floor out of reach (as if the scratch
    student had recalled every rare node): validation picks tau > 0, the rare class's validation
    recall rises, and the bundle passes the served parity check with the offsets in its ONNX file."""
    from distill import pipeline

    monkeypatch.setattr(pipeline.tail, "rare_recall", lambda logits, data: 1.01)
    out = tmp_path / "b"
    args = ["run", "--dataset", "synthetic:nodes=400,rare_share=0.04,signal=0.2,homophily=0.3,train_share=0.4",
            "--teacher", "gat", "--student", "gcn", "--teacher-layers", "2", "--teacher-hidden", "16",
            "--student-hidden", "16", "--epochs", "60", "--patience", "10", "--min-epochs", "10", "--quiet",
            "--out", str(out)]
    assert main(args) == 0
    rep = json.loads((out / "report.json").read_text())
    t = rep["distilled"]["tail"]
    assert t["tau"] > 0 and t["val_rare_after"] > t["val_rare_before"] and t["floor"] == 1.01
    assert t["rare_class"] == 2 and rep["distilled"]["served"] is True
    assert np.argmin(t["offsets"]) == 0  # the most common class is pushed down, the rare ones up
    assert "Tail-class logit adjustment tau" in (out / "report.md").read_text()
    assert main([*args, "--tail-adjust", "off", "--force"]) == 0
    assert "tail" not in json.loads((out / "report.json").read_text())["distilled"]
