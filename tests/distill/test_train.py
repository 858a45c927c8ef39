"""The shared training loop: early stopping, the minimum budget, and what students expose to KD."""

from dataclasses import replace

import torch
from torch_geometric.data import Data

from distill.models import GCN
from distill.train import Edges, TrainConfig, fit

EDGES = torch.tensor([[0, 1, 1, 2, 2, 3], [1, 0, 2, 1, 3, 2]])


def _data() -> Data:
    torch.manual_seed(0)
    mask = torch.tensor([True, True, False, False])
    return Data(x=torch.randn(4, 3), y=torch.tensor([0, 1, 0, 1]), edge_index=EDGES,
                train_mask=mask, val_mask=~mask, test_mask=~mask)


def _flat_loss(out):
    # A loss whose value never changes validation: patience runs out at once.
    return (out.logits * 0).sum() + torch.zeros((), requires_grad=True)


def test_min_epochs_holds_off_early_stopping():
    data = _data()
    model = GCN(3, 8, 2, 2, dropout=0.0, normalize=True)
    budget = {"epochs": 200, "patience": 5, "weight_decay": 0.0}  # no decay: the weights never move
    quick = fit(model, data, Edges(EDGES), _flat_loss, TrainConfig(**budget, min_epochs=0), "t", False)
    held = fit(model, data, Edges(EDGES), _flat_loss, TrainConfig(**budget, min_epochs=40), "t", False)
    assert quick.epochs_run == 6
    assert held.epochs_run == 41


def test_student_hidden_is_pre_activation():
    # KD targets before the ReLU: negative values must survive, else a dead layer stops all gradients.
    torch.manual_seed(0)
    model = GCN(3, 8, 2, 2, dropout=0.0, normalize=True).eval()
    out = model.run(_data().x, EDGES)
    assert len(out.hidden) == 2 and (out.hidden[0] < 0).any()
    assert torch.equal(out.hidden[1], out.logits)


def test_teacher_restarts_keep_the_best_on_validation():
    from distill import teacher as teachers
    from distill.config import RunConfig
    from distill.data import load_dataset

    cfg = RunConfig(dataset="synthetic:nodes=150,avg_degree=6,features=5,seed=2", teacher_layers=2,
                    teacher_hidden=8, epochs=15, patience=5, min_epochs=0, teacher_restarts=3)
    ds = load_dataset(cfg.dataset)
    norm = teachers.feature_norm(cfg, ds)
    m = teachers.train_teacher(cfg, ds, norm, cfg.train_config, torch.device("cpu"), progress=False).metrics
    assert len(m["restarts_val"]) == 3 and len(set(m["restarts_val"])) > 1  # different initialisations
    assert m["best_val"] == max(m["restarts_val"])
    # Restart 0 is the single-restart teacher: one restart reproduces it.
    single = teachers.train_teacher(replace(cfg, teacher_restarts=1), ds, norm, cfg.train_config,
                                    torch.device("cpu"), progress=False).metrics
    assert single["restarts_val"] == m["restarts_val"][:1]


class _Probe(torch.nn.Module):
    """A linear model whose loss the test controls by epoch; in eval mode it can emit NaN logits."""

    def __init__(self, nan_in_eval: bool = False) -> None:
        super().__init__()
        self.lin, self.nan_in_eval, self.calls = torch.nn.Linear(3, 2), nan_in_eval, 0

    def forward(self, x, edge_index=None, edge_weight=None):
        out = self.lin(x)
        return out * float("nan") if self.nan_in_eval and not self.training else out

    def run(self, x, edge_index, edge_weight=None):
        self.calls += 1
        return self(x)


def test_a_late_non_finite_loss_ends_training_on_the_best_state():
    torch.manual_seed(0)
    data, model = _data(), _Probe()
    snapshots = []

    def loss(out):
        snapshots.append({k: v.clone() for k, v in model.state_dict().items()})
        ce = torch.nn.functional.cross_entropy(out[data.train_mask], data.y[data.train_mask])
        return ce * float("nan") if model.calls == 4 else ce  # diverges at the fourth epoch

    res = fit(model, data, Edges(EDGES), loss, TrainConfig(50, 50, 0.1, 0.0, 0), "t", False)
    assert res.epochs_run == 4 and res.best_epoch <= 2
    # The kept weights are those after the best epoch's step, i.e. before the next epoch's forward.
    kept = snapshots[res.best_epoch + 1]
    assert all(torch.equal(v, kept[k]) for k, v in model.state_dict().items())
    assert all(torch.isfinite(v).all() for v in model.state_dict().values())


def test_a_validation_score_never_finite_is_a_training_error():
    import pytest

    from distill.errors import TrainingError

    data, model = _data(), _Probe(nan_in_eval=True)
    ce = torch.nn.functional.cross_entropy
    with pytest.raises(TrainingError, match="validation auroc was never finite in 3 epochs"):
        fit(model, data, Edges(EDGES), lambda out: ce(out[data.train_mask], data.y[data.train_mask]),
            TrainConfig(3, 50, 0.1, 0.0, 0), "t", False)


def test_keep_on_loss_keeps_the_lowest_validation_loss_where_the_metric_ties(monkeypatch):
    """Accuracy ties across epochs: "metric" breaks ties by loss only among the best-accuracy epochs,
    "loss" keeps the lowest validation loss outright."""
    import pytest

    from distill import train

    # (validation metric, -validation loss) per epoch
    scores = [(0.5, -0.9), (0.75, -0.8), (0.5, -0.3), (0.75, -0.7), (0.5, -0.6)]
    kept = {}
    for rule in ("metric", "loss"):
        epochs = iter(scores)
        monkeypatch.setattr(train, "_validate", lambda *a, epochs=epochs: next(epochs))
        res = fit(_Probe(), _data(), Edges(EDGES), lambda out: out.sum() * 0,
                  TrainConfig(5, 50, 0.1, 0.0, 0, keep_on=rule), "t", False)
        kept[rule] = (res.best_epoch, res.best_val, res.best_val_loss)
    assert kept["metric"] == (3, 0.75, pytest.approx(0.7))
    assert kept["loss"] == (2, 0.5, pytest.approx(0.3))
    assert train.val_rank(0.5, 0.3, "loss") > train.val_rank(0.75, 0.7, "loss")
    assert train.val_rank(0.75, 0.7, "metric") > train.val_rank(0.5, 0.3, "metric")
