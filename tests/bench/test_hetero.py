"""bench/hetero.py's table: the rarest labelled class's recall per model, blank for rows recorded before it."""

from tests.bench.scripts import load


def _row(model, seed, f1, recall, **extra):
    return {"model": model, "seed": seed, "macro_f1": f1, "accuracy": f1, "auroc": 0.9, "cka": {"paper": 0.5},
            "split": 0, "dataset": "synthetic-hetero", "per_class_recall": recall, **extra}


def test_rare_class_recall_is_shown_per_model_and_old_rows_leave_it_blank():
    hetero = load("hetero")
    rows = [_row("teacher", 0, 0.8, [0.9, 0.5], rare_class=1), _row("scratch", 0, 0.7, [0.9, 0.25], rare_class=1),
            _row("per-type-balanced", 0, 0.75, [0.8, 0.75], rare_class=1),
            _row("per-type", 0, 0.74, None)]  # a row from before the column: no recall recorded
    lines = {line.split(" | ")[1]: line for line in hetero.table(rows).splitlines()[2:]}
    assert "| 0.2500 ± 0.0000 (1) |" in lines["typed student, scratch"]
    assert "| 0.7500 ± 0.0000 (1) |" in lines["typed, per-type KD, class-balanced"]
    assert "| +4.00 ± 0.00 (1/1) | -6.00 |  |" in lines["typed, per-type KD"]
