"""distill/budget_report.py: the select plot names every candidate without overlapping labels."""

from distill.budget_report import figure


def _candidate(name: str, p99: float, val: float, chosen: bool = False) -> dict:
    return {"name": name, "p99_ms": p99, "val_metric": val, "chosen": chosen}


def test_crowded_candidates_get_labels_that_do_not_overlap():
    # Pairs a marker apart, as same-size students of different families often are.
    rows = [_candidate("gcn-2x128", 0.1576, 0.818), _candidate("sage-2x32", 0.1653, 0.818),
            _candidate("gcn-2x64", 0.1149, 0.822, chosen=True), _candidate("mlp-2x64", 0.0254, 0.7373),
            _candidate("mlp-2x256", 0.0278, 0.7384), _candidate("gcn-3x64", 1.22, 0.818)]
    fig = figure({"budget_ms": 0.5, "metric": "accuracy", "candidates": rows})
    ax = fig.axes[0]
    renderer = fig.canvas.get_renderer()
    labels = {t.get_text(): t.get_window_extent(renderer) for t in ax.texts if "budget" not in t.get_text()}
    assert set(labels) == {r["name"] for r in rows}
    boxes = list(labels.values())
    assert not any(a.overlaps(b) for i, a in enumerate(boxes) for b in boxes[i + 1:])
    legend = [t.get_text() for t in ax.get_legend().get_texts()]
    assert "over budget (p99 > 0.5 ms)" in legend and "chosen: gcn-2x64" in legend
