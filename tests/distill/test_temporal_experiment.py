"""One seed of the temporal experiment end to end on a tiny random temporal graph (a smoke test of
the wiring: every role scored at every k that has users, soft targets on the unlabelled users)."""

from __future__ import annotations

import numpy as np

from bundle.temporal import TemporalPolicy
from distill.temporal.data import TemporalDataset
from distill.temporal.experiment import ROLES, ExperimentConfig, prepare, run_seed
from distill.temporal.loop import LoopConfig
from distill.temporal.protocol import EVAL_KS
from tests.distill.test_temporal_canary import random_store


def test_run_seed_scores_every_role_at_every_k() -> None:
    store = random_store(4, nodes=60, edges=900)
    labels = np.full(60, -1, dtype=np.int64)
    labels[:40] = np.arange(40) % 2
    data = TemporalDataset("tiny", store, labels, np.arange(60))
    cfg = ExperimentConfig(TemporalPolicy(fanout=3, k_hops=2), TemporalPolicy(fanout=4, k_hops=2),
                           unlabelled_cap=30, teacher_members=2, kd_weights=(0.5, 2.0),
                           loop=LoopConfig(epochs=2, batch_size=16))
    prep = prepare(data, cfg, progress=False)
    assert len(prep.unlabelled) == 30 and (prep.unlabelled.label == -1).all()
    assert len(prep.student_blocks) == len(prep.teacher_blocks) == len(prep.labelled)
    result = run_seed(data, prep, 0, cfg, progress=False)
    kept = [k for k in EVAL_KS if result.users_per_k[k] > 0]
    assert kept and set(result.val) == set(ROLES) == set(result.test)
    for role in ROLES:
        assert sorted(result.test[role]) == kept
        assert all(0.0 <= s.auroc <= 1.0 and 0.0 < s.pr_auc <= 1.0 for s in result.test[role].values())
    counts = {k: int(((prep.labelled.k == k)).sum()) for k in EVAL_KS}
    assert result.users_per_k == counts
    assert result.kd_weight in cfg.kd_weights
