"""Tail-class logit adjustment: chosen on validation, shipped inside the ONNX student."""

import json
from dataclasses import replace

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
    assert adj.shift > 0
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
    assert adj.shift == 0.0 and adj.offsets == [0.0, 0.0]


def _three_class(n: int = 600, seed: int = 0) -> tuple[torch.Tensor, Data]:
    """Classes at 60 / 32 / 8 %, logits that under-call the rare class 2."""
    g = torch.Generator().manual_seed(seed)
    u = torch.rand(n, generator=g)
    y = (u > 0.6).long() + (u > 0.92).long()
    logits = torch.nn.functional.one_hot(y, 3).float() * 1.2 + torch.randn(n, 3, generator=g) * 0.8
    logits[:, 2] -= 1.0
    _, data = _binary(n, seed)
    data.y = y
    return logits, data


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


def test_only_the_rarest_class_moves():
    logits, data = _three_class()
    adj = tail.choose(logits, data, shifts=(0.6,))
    assert adj.rare_class == 2 and adj.shift == 0.6
    assert adj.offsets == pytest.approx([-0.2, -0.2, 0.4])  # +0.6 on class 2, centred
    raised = logits.clone()
    raised[:, 2] += 0.6
    shifted = torch.softmax(logits + torch.tensor(adj.offsets), 1)
    assert torch.allclose(shifted, torch.softmax(raised, 1), atol=1e-6)  # centring changes no probability


def _scratch(logits: torch.Tensor, data: Data, shift: float, metric: float = 0.5) -> tail.Floor:
    """The floor of a scratch student that ranks like `logits` with the rare class raised by `shift`,
    and whose validation accuracy is `metric` (low: the limit on giving back the gain does not bind)."""
    raised = logits.clone()
    raised[:, 2] += shift
    return replace(tail.floor(raised, data), metric=metric)


def test_with_a_floor_the_smallest_shift_that_reaches_both_floors_is_kept():
    logits, data = _three_class()
    floor = _scratch(logits, data, 0.5)
    adj = tail.choose(logits, data, floor)
    assert adj.val_rare_after >= floor.recall and adj.rate_after >= floor.rate
    assert (adj.floor, adj.rate_floor) == (floor.recall, floor.rate)
    for s in (s for s in tail.candidate_shifts(logits, 2) if s < adj.shift):  # no smaller shift reaches both
        smaller = tail.choose(logits, data, floor, shifts=(s,))
        assert smaller.val_rare_after < floor.recall or smaller.rate_after < floor.rate
    assert tail.choose(logits, data, _scratch(logits, data, -3.0)).shift == 0.0  # already above: nothing moves


def test_the_prediction_rate_floor_moves_the_shift_when_validation_recall_already_holds():
    logits, data = _three_class()
    floor = _scratch(logits, data, 0.5)
    recall_only = tail.Floor(0.0, 0.0, floor.metric)
    assert tail.choose(logits, data, recall_only).shift == 0.0
    adj = tail.choose(logits, data, tail.Floor(0.0, floor.rate, floor.metric))
    assert adj.shift > 0 and adj.rate_after >= floor.rate > adj.rate_before


def test_no_shift_gives_back_more_than_half_the_validation_gain():
    logits, data = _three_class()
    base = tail.choose(logits, data, shifts=(0.0,))
    scratch_metric = base.val_metric_before - 0.02  # distillation "gained" 2 points on validation
    adj = tail.choose(logits, data, tail.Floor(1.01, 1.0, scratch_metric))  # out of reach
    assert adj.val_metric_after >= base.val_metric_before - 0.01 - 1e-9
    allowed = [tail.choose(logits, data, shifts=(s,)) for s in tail.candidate_shifts(logits, 2)]
    allowed = [a for a in allowed if a.val_metric_after >= base.val_metric_before - 0.01 - 1e-9]
    assert adj.val_rare_after == max(a.val_rare_after for a in allowed)  # the best recall within the limit
    unlimited = max(tail.choose(logits, data, shifts=(s,)).val_rare_after for s in tail.candidate_shifts(logits, 2))
    assert adj.val_rare_after < unlimited  # the limit binds here


def test_a_distilled_student_below_scratch_on_validation_may_give_nothing_back():
    logits, data = _three_class()
    base = tail.choose(logits, data, shifts=(0.0,))
    adj = tail.choose(logits, data, tail.Floor(1.01, 1.0, base.val_metric_before + 0.05))  # scratch was better
    assert adj.val_metric_after >= base.val_metric_before - 1e-9
    costly = [s for s in tail.candidate_shifts(logits, 2) if tail.choose(logits, data, shifts=(s,)).val_metric_after
              < base.val_metric_before - 1e-9]
    assert costly and adj.shift not in costly


def test_a_rare_class_missing_from_validation_still_gets_the_share_floor():
    logits, data = _three_class()
    data.val_mask = data.val_mask & (data.y != 2)
    floor = _scratch(logits, data, 0.5)
    assert np.isnan(floor.recall)
    adj = tail.choose(logits, data, floor)
    assert adj.shift > 0 and adj.rate_after >= floor.rate
    assert all(tail.choose(logits, data, floor, shifts=(s,)).rate_after < floor.rate
               for s in tail.candidate_shifts(logits, 2) if s < adj.shift)


def test_binary_with_a_floor_reaches_the_scratch_students_share_of_positives():
    logits, data = _binary()
    raised = logits.clone()
    raised[:, 1] += 1.0
    floor = tail.floor(raised, data)
    adj = tail.choose(logits, data, floor)
    assert adj.rare_class == 1 and adj.rate_after >= floor.rate > adj.rate_before
    assert adj.val_metric_after == pytest.approx(adj.val_metric_before)  # AUROC cannot move
    past_scratch = min(c for c in tail.candidate_shifts(logits, 1) if c >= 1.0)
    assert adj.shift <= past_scratch  # no further than the first candidate past the scratch student's own offset


def test_the_share_counts_every_node_not_only_validation():
    logits, data = _three_class()
    v = tail.floor(logits, data)
    predicted = logits.argmax(1) == 2
    assert v.rate == pytest.approx(float(predicted.float().mean()))
    assert v.rate != pytest.approx(float(predicted[data.val_mask].float().mean()))


def test_the_prior_counts_validation_labels_because_a_training_split_may_be_balanced():
    y = torch.tensor([0, 1, 0, 1, 0, 0, 0, 1])
    train = torch.tensor([True, True, False, True, False, False, False, False])  # 1:2 in training
    val = ~train
    data = Data(y=y, train_mask=train, val_mask=val, num_nodes=8)
    assert tail.labelled_prior(data, 2).tolist() == pytest.approx([6 / 10, 4 / 10])


def test_tiny_imbalanced_graph_ships_the_adjustment_and_serves_it(tmp_path, monkeypatch):
    """End to end on a 4 %-rare, weak-signal graph with the floor out of reach (as if the scratch
    student had recalled every rare node): validation picks a shift > 0, the rare class's validation
    recall rises, and the bundle passes the served parity check with the offsets in its ONNX file."""
    from distill import pipeline

    monkeypatch.setattr(pipeline.tail, "floor", lambda logits, data: tail.Floor(1.01, 1.0, 0.0))
    out = tmp_path / "b"
    args = ["run", "--dataset", "synthetic:nodes=400,rare_share=0.04,signal=0.2,homophily=0.3,train_share=0.4",
            "--teacher", "gat", "--student", "gcn", "--teacher-layers", "2", "--teacher-hidden", "16",
            "--student-hidden", "16", "--epochs", "60", "--patience", "10", "--min-epochs", "10", "--quiet",
            "--out", str(out)]
    assert main(args) == 0
    rep = json.loads((out / "report.json").read_text())
    t = rep["distilled"]["tail"]
    assert t["shift"] > 0 and t["val_rare_after"] > t["val_rare_before"] and t["floor"] == 1.01
    assert t["rare_class"] == 2 and rep["distilled"]["served"] is True
    assert np.argmax(t["offsets"]) == 2 and len(set(np.delete(t["offsets"], 2))) == 1  # only the rare class moves
    assert "Tail-class logit shift +" in (out / "report.md").read_text()
    assert main([*args, "--tail-adjust", "off", "--force"]) == 0
    assert "tail" not in json.loads((out / "report.json").read_text())["distilled"]


def test_candidate_shifts_follow_the_logits_scale_and_turn_their_quantile_of_missed_nodes():
    logits, _ = _three_class()
    small, big = tail.candidate_shifts(logits, 2, steps=20), tail.candidate_shifts(logits * 10, 2, steps=20)
    assert small[0] == 0.0 and len(small) == 21
    assert np.allclose(big, np.array(small) * 10, rtol=1e-4, atol=1e-4)
    missed = logits.argmax(1) != 2
    for j, s in enumerate(small[1:], start=1):
        raised = logits.clone()
        raised[:, 2] += s
        turned = float(((raised.argmax(1) == 2) & missed).sum()) / float(missed.sum())
        assert turned >= (j / 20) ** 2 - 1 / float(missed.sum())
    assert tail.candidate_shifts(torch.tensor([[0.0, 1.0], [0.0, 2.0]]), 1) == (0.0,)  # nothing to turn
