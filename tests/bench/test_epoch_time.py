"""bench/epoch_time.py: one row per family (and the sparse-product families' message-passing paths), medians of
the counted epochs."""

import torch

from distill.models import NodeOutputs
from distill.train import Edges
from tests.bench.scripts import load


def test_each_family_gets_a_row_and_the_sparse_product_ones_a_weighted_message_passing_row(monkeypatch):
    epoch_time = load("epoch_time")
    weighted = []
    real = epoch_time.epoch_seconds

    def recording(model, x, y, train, edges, *args):
        weighted.append(edges.edge_weight is not None)
        return real(model, x, y, train, edges, *args)

    monkeypatch.setattr(epoch_time, "epoch_seconds", recording)
    table = epoch_time.run("synthetic:nodes=120", ["sage-res", "gcnii", "grand", "gcn"], 1,
                           {"teacher_layers": 2, "gcnii_layers": 2}, torch.device("cpu"))
    rows = [line.split(" | ") for line in table.splitlines() if line.startswith("| ") and "---" not in line][1:]
    assert [r[0].lstrip("| ") for r in rows] == ["sage-res", "sage-res (message passing)", "gcnii",
                                                  "gcnii (message passing)", "grand", "grand (message passing)",
                                                  "gcn"]
    assert weighted == [False, True, False, True, False, True, False]
    assert [int(r[1]) for r in rows] == [2, 2, 2, 2, 2, 2, 2]
    assert all(float(r[2]) > 0 for r in rows)


def test_the_warm_up_epoch_is_not_counted_and_the_model_trains():
    epoch_time = load("epoch_time")
    model = torch.nn.Module()
    lin = torch.nn.Linear(3, 2)
    model.lin = lin
    model.run = lambda x, ei, ew: NodeOutputs(lin(x))
    before = lin.weight.detach().clone()
    x, y = torch.randn(6, 3), torch.tensor([0, 1, 0, 1, 0, 1])
    times = epoch_time.epoch_seconds(model, x, y, torch.ones(6, dtype=torch.bool),
                                     Edges(torch.zeros(2, 0, dtype=torch.long)), 3, 0.0, torch.device("cpu"))
    assert len(times) == 3 and all(t > 0 for t in times)
    assert not torch.equal(lin.weight, before)
