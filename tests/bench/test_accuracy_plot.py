"""bench/accuracy_plot.py: one colour per role in every panel, and the roles in the table's order."""

from tests.bench.scripts import load


def test_roles_are_the_teacher_then_the_benchmark_variants_in_order():
    assert ("teacher", *load("accuracy").VARIANTS) == load("accuracy_plot").ROLES


def test_plot_gives_each_role_one_colour_in_every_panel_on_a_full_axis():
    acc = load("accuracy")
    rows = [{"dataset": d, "student": s, "variant": v, "seed": seed, "accuracy": 0.5 + 0.1 * seed}
            for d in ("a", "b") for s, v in (("gat-6", "teacher"), ("mlp-2", "scratch"), ("mlp-2", "response"),
                                               ("gcn-2", "scratch"), ("gcn-2", "all"))
            for seed in (0, 1)]
    acc._SUPPORT.update(a=[5, 5], b=[5, 5])
    fig = load("accuracy_plot").figure(rows, {"a": 3, "b": 3})
    panels = [ax for ax in fig.axes if ax.get_visible()]
    assert len(panels) == 2
    colours = [{tuple(p.get_facecolor()) for p in ax.patches} for ax in panels]
    assert colours[0] == colours[1] and len(colours[0]) == 4  # teacher, scratch, response, all
    assert all(ax.get_ylim()[0] == 0.0 for ax in panels)
    assert "2 seeds" in panels[0].get_title()
    legend = [t.get_text() for t in fig.legends[0].get_texts()]
    assert legend[:4] == ["teacher", "scratch (no distillation)", "distilled: response", "distilled: all"]
