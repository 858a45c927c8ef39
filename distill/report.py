"""The run report: teacher / scratch / distilled side by side, as JSON and as markdown."""

from __future__ import annotations

import math
from typing import Any

from bundle.manifest import Decision
from distill.config import RunConfig
from distill.data import Dataset
from distill.train import selection_metric

ROLES = ("teacher", "scratch", "distilled")
METRICS = ("accuracy", "macro_f1", "auroc", "pr_auc")


def _clean(value: Any) -> Any:
    """NaN (a class absent from the test set) becomes null so the JSON stays strict."""
    if isinstance(value, float):
        return None if math.isnan(value) else round(value, 6)
    if isinstance(value, list):
        return [_clean(v) for v in value]
    if isinstance(value, dict):
        return {k: _clean(v) for k, v in value.items()}
    return value


def build(ds: Dataset, cfg: RunConfig, teacher: dict[str, Any], scratch: dict[str, Any],
          distilled: dict[str, Any], decision: Decision | None = None) -> dict[str, Any]:
    """Assemble report.json, with flags for results a user must not miss, and a binary task's
    decision threshold (distill.served.check) as the top-level "decision"."""
    rep: dict[str, Any] = {role: {k: _clean(v) for k, v in m.items()}
                           for role, m in zip(ROLES, (teacher, scratch, distilled), strict=True)}
    key = selection_metric(ds.num_classes)
    flags = []
    if (teacher[key] or 0) <= (scratch[key] or 0):
        flags.append(f"teacher ({cfg.teacher_family(teacher)}) does not beat the scratch student on test {key}: "
                     f"{teacher[key]:.4f} <= {scratch[key]:.4f}")
    if (distilled[key] or 0) < (scratch[key] or 0):
        flags.append(f"distilled student is below the scratch student on test {key}: "
                     f"{distilled[key]:.4f} < {scratch[key]:.4f}")
    if "response" in (distilled.get("kd") or cfg.kd_kinds) and distilled.get("alpha") == 0.0:
        flags.append("validation kept alpha 0: the teacher's soft labels did not help this student, so it "
                     "was trained on hard labels (and any other --kd objectives) only")
    student = distilled.get("student") or cfg.student  # the family --student auto kept
    rep.update({"flags": flags, "dataset": ds.name, "class_names": list(ds.class_names),
                "teacher_name": cfg.teacher_name(teacher), "student": f"{student}-{cfg.student_layers}",
                "selection_metric": key, "gap": gap(teacher, scratch, distilled, key)})
    if decision is not None:
        rep["decision"] = _clean(decision.model_dump(mode="json"))
    return rep


def gap(teacher: dict[str, Any], scratch: dict[str, Any], distilled: dict[str, Any], key: str) -> dict[str, Any]:
    """The point of distilling, in numbers: the teacher's lead over the scratch student on test `key`
    and how much of it the distilled student recovers (`share`; None when there was no lead to recover).
    Any value is None when a model lacks `key` (e.g. AUROC on a test set holding one class)."""
    t, s, d = (m.get(key) for m in (teacher, scratch, distilled))
    if t is None or s is None or d is None or any(math.isnan(v) for v in (t, s, d)):
        return {"metric": key, "teacher_lead": None, "recovered": None, "share": None}
    lead, recovered = t - s, d - s
    return {"metric": key, "teacher_lead": round(lead, 6), "recovered": round(recovered, 6),
            "share": round(recovered / lead, 4) if lead > 0 else None}


def gap_sentence(g: dict[str, Any]) -> str:
    """`gap`'s numbers as the sentence a reader sees first, in points (x 100) of the metric."""
    key, lead, recovered = g["metric"], g["teacher_lead"], g["recovered"]
    if lead is None:
        return f"No summary: a model has no test {key}."
    if lead <= 0:
        return (f"The teacher did not beat the scratch student ({100 * abs(lead):.1f} points of {key} behind it), "
                "so there was no lead for distillation to recover.")
    text = f"Teacher beats the scratch student by {100 * lead:.1f} points of {key}; "
    if recovered <= 0:
        return text + f"the distilled student recovers none of them ({100 * abs(recovered):.1f} points below scratch)."
    return text + f"the distilled student recovers {100 * recovered:.1f} of them ({100 * g['share']:.0f} %)."


def headline(m: dict[str, Any]) -> str:
    return " ".join(f"{k} {m[k]:.4f}" if m.get(k) is not None else f"{k} n/a" for k in METRICS)


def markdown(rep: dict[str, Any]) -> str:
    """A table a person reads: one row per model, recall per class, then the flags."""
    names = rep["class_names"]
    # Binary (fraud-like) tasks: the recall a team gets when it can review 1 % of the legitimate cases.
    metrics = METRICS + (("recall_at_1pct_fpr",) if len(names) == 2 else ())
    head = "| model | " + " | ".join(metrics) + " | " + " | ".join(f"recall {c}" for c in names) + " | epochs |"
    # Reports written before `gap` existed are re-rendered from their own numbers.
    summary = gap_sentence(rep.get("gap") or gap(*(rep[r] for r in ROLES), rep["selection_metric"]))
    lines = [f"# {rep['dataset']}: {rep['teacher_name']} teacher -> {rep['student']} student", "", summary, "", head,
             "|" + "---|" * (len(metrics) + len(names) + 2)]
    for role in ROLES:
        m = rep[role]
        cells = [_fmt(m.get(k)) for k in metrics] + [_fmt(r) for r in m["per_class_recall"]]
        lines.append(f"| {role} | " + " | ".join(cells) + f" | {m['epochs_run']} |")
    by_loss = rep["teacher"].get("keep_on") == "loss"
    teacher_rule = " (the teacher's on validation loss)" if by_loss else ""
    lines += ["", "Test set. Early stopping on validation " + rep["selection_metric"] + teacher_rule + "."]
    families = rep["teacher"].get("families_val") or {}
    if len(families) > 1:
        vals = ", ".join(f"{k} {v:.4f}" for k, v in families.items())
        skipped = rep["teacher"].get("families_skipped") or []
        rule = "loss" if by_loss else rep["selection_metric"]
        lines.append(f"Teacher: `{rep['teacher_name']}`, the best of the families trained on validation "
                     f"{rule} ({vals})" + (f"; skipped by --teacher-budget: "
                                                              f"{', '.join(skipped)}" if skipped else "") + ".")
    if rep["teacher"].get("input_dropout"):
        lines.append(_input_dropout_line(rep["teacher"]["input_dropout"], rep["selection_metric"]))
    members = rep["teacher"].get("members") or []
    if len(members) > 1:
        alone = ", ".join(f"seed {r['seed']} {_fmt(r.get(rep['selection_metric']))}" for r in members)
        lines.append(f"Teacher: the mean prediction of {len(members)} teachers (--teacher-ensemble), each alone "
                     f"on test {rep['selection_metric']}: {alone}.")
    d = rep["distilled"]
    candidates = d.get("candidates_val", {})
    if len(candidates) > 1:
        vals = ", ".join(f"{k} {v:.4f}" for k, v in candidates.items())
        alpha = f", soft-target weight alpha {d['alpha']:g}" if d.get("alpha") is not None else ""
        alpha += f", temperature {d['temperature']:g}" if d.get("temperature") is not None else ""
        alpha += ", without weight decay or dropout" if d.get("regularised") is False else ""
        alpha += ", class-balanced soft targets" if d.get("balanced") else ""
        family = f"`{d['student']}` student, " if d.get("student") else ""
        kd = f", objectives {'+'.join(d['kd'])}" if d.get("kd") else ""
        lines.append(f"Distilled student: {family}`{d['propagation']}` propagation{kd}{alpha}, chosen on validation "
                     f"{rep['selection_metric']} ({vals}).")
    if d.get("tail"):
        lines.append(_tail_line(d["tail"], rep["class_names"], rep["selection_metric"]))
    if rep.get("decision"):
        lines.append(_decision_line(rep["decision"]))
    lines += [f"- **flag:** {f}" for f in rep["flags"]] or ["- no flags"]
    return "\n".join(lines) + "\n"


def _tail_line(t: dict[str, Any], names: list[str], metric: str) -> str:
    """One sentence on the tail-class logit shift (distill.tail) the shipped student carries."""
    rare = names[t["rare_class"]]
    floor = (f"; the scratch student recalls {_fmt(t['floor'])} of {rare} on validation and predicts it "
             f"for {_fmt(t['rate_floor'])} of all nodes" if "floor" in t and t.get("rate_floor") is not None else "")
    if not t["shift"]:
        return f"Tail-class logit shift: none needed or none helped on validation{floor}."
    return (f"Tail-class logit shift +{t['shift']:g} on {rare}, chosen on validation{floor}: "
            f"recall of {rare} {_fmt(t['val_rare_before'])} -> {_fmt(t['val_rare_after'])}, share of nodes "
            f"predicted {rare} {_fmt(t['rate_before'])} -> {_fmt(t['rate_after'])}, balanced accuracy "
            f"{_fmt(t['val_balanced_before'])} -> {_fmt(t['val_balanced_after'])}, {metric} "
            f"{_fmt(t['val_metric_before'])} -> {_fmt(t['val_metric_after'])}. The distilled row includes it.")


def _input_dropout_line(t: dict[str, Any], metric: str) -> str:
    """One sentence on --input-dropout as the run decided it (distill.input_dropout)."""
    state = "on" if t["on"] else "off"
    why = {"set": "as set by --input-dropout", "bag-of-words": "bag-of-words features"}.get(t["rule"])
    if why is None:
        why = (f"dense features: the scratch students scored validation {metric} {_fmt(t['probe_val'].get('on'))} "
               f"with it, {_fmt(t['probe_val'].get('off'))} without")
    return f"Input dropout: {state} for the teacher and every student ({why})."


def _fmt(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.4f}"


def _decision_line(t: dict[str, Any]) -> str:
    """One sentence on the served decision threshold (distill.served.choose_decision)."""
    return (f"Decision: `{t['positive_class']}` when its probability is >= {t['threshold']:g} (the bundle's default; "
            f"a request may pass its own `threshold`), chosen on validation to maximise its F1 "
            f"({_fmt(t.get('val_f1'))}): test precision {_fmt(t.get('test_precision'))}, recall "
            f"{_fmt(t.get('test_recall'))}, F1 {_fmt(t.get('test_f1'))}.")
