"""bench/epoch_time.py: one row per family (and sage-res's message-passing path), medians of the counted epochs."""

import torch

from distill.train import Edges
from tests.bench.scripts import load


def test_each_family_gets_a_row_and_sage_res_its_message_passing_path_too():
    epoch_time = load("epoch_time")
    table = epoch_time.run("synthetic:nodes=120", ["sage-res", "gcn"], 1, {"teacher_layers": 2}, torch.device("cpu"))
    rows = [line.split(" | ") for line in table.splitlines() if line.startswith("| ") and "---" not in line][1:]
    assert [r[0].lstrip("| ") for r in rows] == ["sage-res", "sage-res (message passing)", "gcn"]
    assert all(float(r[2]) > 0 and float(r[3]) <= float(r[2]) for r in rows)
    assert min(float(r[4].rstrip(" |")) for r in rows) == 1.0


def test_the_warm_up_epoch_is_not_counted_and_the_model_trains():
    epoch_time = load("epoch_time")
    model = torch.nn.Module()
    lin = torch.nn.Linear(3, 2)
    model.lin = lin
    model.run = lambda x, ei, ew: type("O", (), {"logits": lin(x)})()
    before = lin.weight.detach().clone()
    x, y = torch.randn(6, 3), torch.tensor([0, 1, 0, 1, 0, 1])
    times = epoch_time.epoch_seconds(model, x, y, torch.ones(6, dtype=torch.bool),
                                     Edges(torch.zeros(2, 0, dtype=torch.long)), 3, 0.0, torch.device("cpu"))
    assert len(times) == 3 and all(t > 0 for t in times)
    assert not torch.equal(lin.weight, before)
