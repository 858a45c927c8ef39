"""The one training loop: full-batch, Adam, early stopping on a validation metric.

Teacher, scratch student and distilled students all go through `fit`; only `loss_fn` differs.
"""

from __future__ import annotations

import copy
import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch_geometric.data import Data
from tqdm.auto import tqdm

from distill.errors import ConfigError, TrainingError
from distill.metrics import evaluate
from distill.models import NodeOutputs

LossFn = Callable[[NodeOutputs], Tensor]


# Which validation epoch `fit` keeps: "metric", the best validation metric (accuracy or AUROC), ties to
# the lower validation loss; "loss", the lowest validation cross-entropy (GCNII's and GAT's own rule),
# ties to the higher metric. Accuracy on a few hundred nodes moves in coarse steps, so many epochs tie
# on it, and the loss separates them by how confident the model is where it is right and wrong.
KEEP_ON = ("metric", "loss")


@dataclass(frozen=True)
class TrainConfig:
    """Optimisation budget, identical for teacher, scratch and distilled runs."""

    epochs: int = 300
    patience: int = 50
    lr: float = 0.01
    weight_decay: float = 5e-4
    min_epochs: int = 100
    keep_on: str = "metric"  # see KEEP_ON

    def __post_init__(self) -> None:
        if self.epochs < 1 or self.patience < 1 or self.lr <= 0 or self.weight_decay < 0 or self.min_epochs < 0:
            raise ConfigError(f"bad training budget {self}; epochs, patience, lr must be positive")
        if self.keep_on not in KEEP_ON:
            raise ConfigError(f"keep_on {self.keep_on!r}: choose one of {list(KEEP_ON)}")


@dataclass(frozen=True)
class Edges:
    """The edges a model trains on: edge_index [2, E] and optional edge_weight [E]."""

    edge_index: Tensor
    edge_weight: Tensor | None = None

    def to(self, device: torch.device) -> Edges:
        w = self.edge_weight.to(device) if self.edge_weight is not None else None
        return Edges(self.edge_index.to(device), w)


@dataclass(frozen=True)
class FitResult:
    epochs_run: int
    best_epoch: int
    best_val: float  # the validation metric at best_epoch
    seconds: float
    best_val_loss: float = float("nan")  # the validation cross-entropy at best_epoch


def val_rank(best_val: float, best_val_loss: float, keep_on: str) -> tuple[float, ...]:
    """Higher is better: how restarts and teacher families are compared under `keep_on` (KEEP_ON): by
    the kept epoch's validation metric alone, or by its loss, then its metric (`fit` also breaks ties
    on the metric by the loss between epochs; between runs the first one tried wins them)."""
    return (-best_val_loss, best_val) if keep_on == "loss" else (best_val,)


def resolve_device(name: str) -> torch.device:
    """`auto` -> CUDA when present, else CPU; `cpu` / `cuda` / `cuda:N` as given."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(f"--device {name}: CUDA is not available here; use --device auto or cpu")
    try:
        return torch.device(name)
    except RuntimeError:
        raise ConfigError(f"--device {name!r} is not a device; use auto, cpu or cuda") from None


def selection_metric(num_classes: int) -> str:
    """AUROC for binary (imbalanced fraud-like) tasks, accuracy otherwise."""
    return "auroc" if num_classes == 2 else "accuracy"


def fit(model: nn.Module, data: Data, graph: Edges, loss_fn: LossFn, cfg: TrainConfig,
        desc: str, progress: bool = True, extra: nn.Module | None = None) -> FitResult:
    """Train `model` in place on `data` (already on the device); keep the best validation state.

    A loss that turns non-finite after a finite validation score ends training there, on the best
    state so far; before one, it raises TrainingError (the kept state would be the initialisation).

    Never stops before `cfg.min_epochs`: a distillation term can hold validation flat for the first
    tens of epochs (the LSP term on Cora, seed 2) and patience alone then stops at the initial state.

    `extra` holds trainable parts of the loss (e.g. feature-distillation projections), optimised
    alongside the model but never part of it. A model with its own weight-decay needs (GCNII) says
    so through `param_groups` (see there).
    """
    start = time.perf_counter()
    opt = torch.optim.Adam(param_groups(model, cfg.weight_decay, extra), lr=cfg.lr)
    metric = selection_metric(int(data.y.max()) + 1)
    best: tuple[float, float] = (-np.inf, -np.inf)
    best_state, best_epoch, epoch = copy.deepcopy(model.state_dict()), 0, 0
    bar = tqdm(range(cfg.epochs), desc=desc, disable=not progress, leave=False, mininterval=1.0)
    for epoch in bar:
        model.train()
        opt.zero_grad()
        loss = loss_fn(model.run(data.x, graph.edge_index, graph.edge_weight))
        if not torch.isfinite(loss):  # one step on it would make every weight NaN
            if np.isfinite(best[0]):  # a late divergence: the best state so far was never touched by it
                break
            raise TrainingError(f"{desc}: the training loss is {loss.item()} at epoch {epoch + 1}; the largest "
                                f"input feature magnitude is {float(data.x.abs().max()):.3g}: rescale extreme "
                                "features, or lower --lr")
        loss.backward()
        opt.step()
        metric_score, neg_loss = _validate(model, data, graph, metric)
        score = (neg_loss, metric_score) if cfg.keep_on == "loss" else (metric_score, neg_loss)
        if score > best:
            best, best_epoch = score, epoch
            best_state = copy.deepcopy(model.state_dict())
        elif epoch - best_epoch >= cfg.patience and epoch >= cfg.min_epochs:
            break
        shown = best[1] if cfg.keep_on == "loss" else best[0]  # the metric either way
        bar.set_postfix(loss=f"{loss.item():.3f}", val=f"{shown:.3f}", refresh=False)
    if not np.isfinite(best[0]):
        # Never a finite validation score: the kept state would be the untrained initialisation.
        raise TrainingError(f"{desc}: the validation {metric} was never finite in {epoch + 1} epochs "
                            f"(last loss {loss.item():.4g}); the model did not train. Lower --lr, or check "
                            "the features for extreme values")
    model.load_state_dict(best_state)
    kept_metric, kept_neg_loss = best if cfg.keep_on == "metric" else best[::-1]
    return FitResult(epoch + 1, best_epoch, float(kept_metric), time.perf_counter() - start, -float(kept_neg_loss))


def param_groups(model: nn.Module, weight_decay: float, extra: nn.Module | None = None) -> list[dict[str, object]]:
    """Adam parameter groups: `model.param_groups(weight_decay) -> list[dict]` when the model defines
    it (each dict holds "params" and may set its own "weight_decay"; together they must cover every
    parameter exactly once), else one group of all its parameters; `extra`'s parameters always
    decay by `weight_decay`."""
    hook = getattr(model, "param_groups", None)
    groups = hook(weight_decay) if callable(hook) else [{"params": list(model.parameters())}]
    covered = [id(p) for g in groups for p in g["params"]]
    if len(covered) != len(set(covered)) or set(covered) != {id(p) for p in model.parameters()}:
        raise ValueError(f"{type(model).__name__}.param_groups must cover every parameter exactly once")
    groups = [{"weight_decay": weight_decay, **g} for g in groups]
    if extra is not None and any(True for _ in extra.parameters()):
        groups.append({"params": list(extra.parameters()), "weight_decay": weight_decay})
    return groups


def validate(model: nn.Module, data: Data, graph: Edges) -> tuple[float, float]:
    """(validation metric, -validation loss) of a trained model, as `fit` scores its epochs."""
    return _validate(model, data, graph, selection_metric(int(data.y.max()) + 1))


@torch.no_grad()
def _validate(model: nn.Module, data: Data, graph: Edges, metric: str) -> tuple[float, float]:
    """(validation metric, -validation loss): ties on the metric go to the lower loss."""
    model.eval()
    logits = model(data.x, graph.edge_index, graph.edge_weight)
    mask = data.val_mask
    if not torch.isfinite(logits[mask]).all():  # argmax of NaN still scores; such a state is never kept
        return float("nan"), float("nan")
    probs = F.softmax(logits[mask], dim=-1).cpu().numpy()
    value = evaluate(probs, data.y[mask].cpu().numpy())[metric]
    return float(value), -float(F.cross_entropy(logits[mask], data.y[mask]))


@torch.no_grad()
def predict(model: nn.Module, data: Data, graph: Edges) -> Tensor:
    """Eval-mode logits [N, C] for every node."""
    model.eval()
    return model(data.x, graph.edge_index, graph.edge_weight)


def test_metrics(logits: Tensor, data: Data) -> dict[str, object]:
    """Accuracy, macro-F1, AUROC and per-class recall on the test nodes."""
    mask = data.test_mask
    probs = F.softmax(logits[mask], dim=-1).cpu().numpy()
    return evaluate(probs, data.y[mask].cpu().numpy())
