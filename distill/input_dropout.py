"""Dropout on a model's input features (--input-dropout), decided once per run for every model.

On bag-of-words features dropping words is the augmentation GCN and GAT were tuned with, and it
stays on. On dense, hand-crafted features it is a bet either way: each column is its own piece of
evidence (review-fraud statistics: it cost every model about 2 AUROC points on Amazon), yet with
few labels and weak features it is what keeps a model from fitting noise (the synthetic default).
So under auto the scratch student search, which needs no teacher, runs with and without it, and the
setting that validates better is the one the teacher and every student use (README "Results")."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import torch

from distill.artefacts import InputDropout, Prepared, Trained
from distill.choose import best_on_validation
from distill.config import RunConfig
from distill.data import Dataset, bag_of_words
from distill.models import FeatureNorm
from distill.students import train_candidates
from distill.teacher import teacher_signals
from distill.train import Edges, TrainConfig


@dataclass(frozen=True)
class Decision:
    """The run's input dropout, and the scratch students the probe trained under it (None when no
    probe ran): the run's scratch baseline, so the probe costs one extra scratch search, not two."""

    dropout: InputDropout
    scratch: Trained | None = None

    def config(self, cfg: RunConfig) -> RunConfig:
        """`cfg` with the decision written in: what the teacher is built from and keyed by."""
        return self.dropout.config(cfg)

    def prepared(self, cfg: RunConfig, ds: Dataset, norm: FeatureNorm, device: torch.device,
                 teacher: torch.nn.Module, edges: Edges, metrics: dict[str, Any]) -> Prepared:
        """What every student of the run reads: the teacher (trained under `self.config(cfg)`) and
        its signals, its `metrics` with the decision recorded, and the probe's scratch students."""
        return Prepared(ds, device, norm, cfg.train_config, teacher, edges,
                        {**metrics, "input_dropout": asdict(self.dropout)},
                        teacher_signals(teacher, ds, edges, device), self.dropout, self.scratch)


def decide(cfg: RunConfig, ds: Dataset, norm: FeatureNorm, tcfg: TrainConfig, device: torch.device,
           progress: bool = False) -> Decision:
    """--input-dropout for this run: as set; on for bag-of-words under auto; else what the scratch
    students of `cfg.students` validate better with (an exact tie keeps it on, as before the option)."""
    if cfg.input_dropout != "auto":
        return Decision(InputDropout(cfg.input_dropout == "on", "set"))
    if bag_of_words(ds.data.x):
        return Decision(InputDropout(True, "bag-of-words"))

    def scratch(on: bool) -> Trained:
        prep = Prepared.without_teacher(ds, device, norm, tcfg, InputDropout(on, "probe"))
        return train_candidates(cfg, prep, (), progress)

    best = best_on_validation(((name, lambda on=on: scratch(on)) for name, on in (("on", True), ("off", False))),
                              key=lambda t: (t.fit.best_val,))
    return Decision(InputDropout(best.name == "on", "probe", best.scores), best.item)
