"""The run config: one frozen dataclass, every field a CLI option, saved in every bundle's manifest."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass, field, fields
from typing import TYPE_CHECKING, Any

from distill.errors import ConfigError

if TYPE_CHECKING:
    from distill.train import TrainConfig

KD_KINDS = ("response", "feature", "structure")
# --kd auto: the objective sets the distilled student is trained with, best on validation. Structure
# KD keeps the neighbours the teacher weighs most (and adds LSP); on Tolokers that is where the
# teacher's lead was: 10 sampled neighbours hide what a full-neighbourhood teacher attends to, and
# soft labels alone added nothing there (half the nodes are labelled). Where it does not pay, the
# response-only candidates win on validation. Feature KD is left out: it cost AUROC on Tolokers.
KD_AUTO = (("response",), ("response", "structure"))
# --alpha auto: the soft-target weights tried, best on validation. 0 = the teacher's soft labels are
# not used (Tolokers GCN: they cost AUROC at every weight tried); 0.2 beat 0.5 for GCN students on
# Cora and Tolokers in every paired seed; 0.8 beat 0.5 for MLP students on Cora, which see the graph
# only through the teacher's soft labels (GLNN).
ALPHA_GRID = (0.0, 0.2, 0.8)
# --temperature auto: which T gives a student a usable signal depends on the teacher's logit scale.
# A LayerNorm'd GAT's logits are sharp (per-node std ~6 on Cora), so T=4 softens them usefully; a
# GCNII's are soft (std ~1), and at T=4 its targets are nearly uniform (Cora MLP student 0.755 at
# T=4, 0.787 at T=1, seed 0).
TEMPERATURE_GRID = (1.0, 4.0)
# --soft-regularise (default on): without weight decay and dropout a student can fit the teacher's
# soft labels on every node it is trained on, which is all validation sees, since the soft labels
# cover the validation nodes too. Unregularised training is opt-in because that fit is memorised:
# on nodes whose soft labels it never saw (a node added after training) such a student falls far
# below a regularised one (README "Soft labels without weight decay").

# --student auto: the 2-layer families tried, best on validation, for the scratch and the distilled
# student alike. Neither wins everywhere: gcn on citation graphs (Cora scratch 0.816 vs 0.764),
# sage-res where the node's own features and degree matter (Tolokers scratch AUROC 0.80 vs 0.72).
AUTO_STUDENTS = ("gcn", "sage-res")
# `distill select`'s candidates (STUDENT:LAYERS:HIDDEN): every family at a few sizes, from the
# graph-free ones (one row per node, whatever its degree) to a 3-layer GCN the budget usually excludes.
DEFAULT_GRID = ("gcn:2:16", "gcn:2:64", "gcn:2:128", "gcn:3:64", "sage:2:32", "sage:2:64", "sage-res:2:64",
                "ppr-mlp:2:64", "mlp:2:64", "mlp:2:256", "mlp:3:256")
# --teacher auto: the families trained, in this order, best on validation kept. gat first: it is the
# reference design, and the one family a --teacher-budget always leaves room for.
AUTO_TEACHERS = ("gat", "gat-sep", "gcnii", "grand", "sage-res")


# `distill run --help` lists the options in these groups, in this order; every RunConfig field names one.
GROUPS = {
    "data": "what graph and split to train on, and how its features are normalised",
    "teacher": "the large GNN trained first (never served)",
    "student": "the small model that is exported to ONNX and served",
    "distillation": "how the teacher's outputs train the distilled student",
    "training": "the optimisation budget, shared by teacher, scratch and distilled runs",
    "job": "the job itself: where it writes, how it runs",
}


def _opt(group: str, default: object, help: str, choices: tuple[str, ...] | None = None) -> Any:
    if group not in GROUPS:  # a typo here would silently drop the option from `--help`
        raise ValueError(f"unknown option group {group!r}; one of {list(GROUPS)}")
    return field(default=default, metadata={"help": help, "choices": choices, "group": group})


@dataclass(frozen=True)
class RunConfig:
    """Everything `distill run` needs. Field order is the order of `distill run --help`."""

    dataset: str = _opt("data", "synthetic", "dataset spec: synthetic[:key=value,...] | "
                                             "synthetic-hetero[:key=value,...] | planetoid:PATH | npz:PATH | "
                                             "mat:PATH | acm:PATH | bitcoin-otc:PATH; or by name, downloaded once into "
                                             "$GRAPH_DISTILL_CACHE (default ~/.cache/graph-distill): "
                                             "planetoid:Cora|CiteSeer|PubMed, "
                                             "npz:tolokers|roman_empire|amazon_ratings|minesweeper|questions")
    split: int = _opt("data", 0, "which fixed split to use (npz: its index; mat: the seed; acm: 0 / 1 / 2 = 20 / 40 "
                                 "/ 60 labels per class)")
    teacher: str = _opt("teacher", "auto",
                        "teacher architecture (gat-sep: attention over neighbours, the node's own state "
                        "through a separate transform; gcnii: deep GCN with initial residual and identity "
                        "mapping; grand: random propagation (DropNode, --teacher-layers hops averaged) read by "
                        "an MLP, trained for consistency across random views; sage-res: the sage-res student's "
                        "residual, normalised ego / neighbour-mean block at teacher depth; hetero-sage: "
                        "per-relation SAGE over every node and edge type of a heterogeneous dataset; auto: "
                        f"train {', '.join(AUTO_TEACHERS)} (and hetero-sage on a heterogeneous dataset) in turn, "
                        "keep the best on validation)",
                        ("auto", "gat", "gat-sep", "gcnii", "grand", "gcn", "sage", "sage-res", "hetero-sage"))
    teacher_layers: int = _opt("teacher", 6, "teacher message-passing layers")
    teacher_hidden: int = _opt("teacher", 64, "teacher width (all heads together for gat)")
    teacher_heads: int = _opt("teacher", 4, "attention heads per gat layer")
    teacher_dropout: float = _opt("teacher", 0.5, "teacher feature dropout")
    attn_dropout: float = _opt("teacher", 0.3, "dropout on gat attention coefficients")
    teacher_norm: str = _opt("teacher", "layer", "normalisation in each teacher block", ("layer", "batch", "none"))
    teacher_residual: bool = _opt("teacher", True, "residual connection around each gat block")
    teacher_jk: str = _opt("teacher", "none", "jumping knowledge over gat blocks", ("none", "cat", "max"))
    # GCNII gets its own depth: its initial residual and identity mapping are there to let it go deeper
    # than a GAT without over-smoothing (Chen et al.: accuracy rises to 16-32 layers on Cora/CiteSeer).
    # Teacher alone, seeds 0 and 1, mean test accuracy: Cora 0.82 / 0.83 / 0.84 / 0.83 at 6 / 8 / 16 / 32
    # layers (32 early-stops within the shared --epochs/--patience budget), CiteSeer 0.70 / 0.71 at 8 / 16.
    gcnii_layers: int = _opt("teacher", 16, "gcnii message-passing layers (its own depth: gcnii is built to go "
                                            "deeper than the gat without over-smoothing)")
    gcnii_alpha: float = _opt("teacher", 0.1, "gcnii initial-residual weight: the share of the first hidden state "
                                              "fed to every layer")
    gcnii_theta: float = _opt("teacher", 0.5, "gcnii identity-mapping strength: layer l mixes its weight in by "
                                              "log(theta / l + 1)")
    teacher_restarts: int = _opt("teacher", 1, "train the teacher from this many initialisations, keep the best on "
                                               "validation")
    teacher_budget: float = _opt("teacher", 0.0, "seconds of teacher training after which --teacher auto starts no "
                                                 "further family (the first always runs; 0 = no limit)")
    teacher_keep_on: str = _opt("teacher", "metric",
                                "which validation epoch, restart and family of the teacher is kept: metric, the "
                                "best validation accuracy / AUROC (epochs tied on it go to the lower loss); loss, "
                                "the lowest validation cross-entropy (GCNII's and GAT's own rule)", ("metric", "loss"))
    teacher_ensemble: int = _opt("teacher", 1,
                                 "train the teacher this many times (seeds seed, seed+1, ...; members after the "
                                 "first use the family the first kept) and distil from their mean prediction "
                                 "(Hinton et al. 2015), at that many times the teacher's cost; 1 = one teacher")
    teacher_fanout: int = _opt("teacher", 0, "cap on in-neighbours the teacher sees (0 = full graph; useful on CPU "
                                             "for big graphs)")
    student: str = _opt("student", "auto",
                        "student architecture (sage-res: input projection, separate ego and neighbour "
                        "transforms, raw log-degree, LayerNorm, residual; ppr-mlp: a residual MLP over the "
                        "features and their personalised-PageRank neighbour mean, one stored row per node "
                        "served; auto: train each of "
                        f"{', '.join(AUTO_STUDENTS)}, keep the best on validation)",
                        ("auto", "gcn", "sage", "sage-res", "ppr-mlp", "mlp"))
    student_layers: int = _opt("student", 2, "student layers (= hops of the served neighbourhood for gcn/sage)")
    student_hidden: int = _opt("student", 64, "student width")
    student_dropout: float = _opt("student", 0.5, "student feature dropout")
    fanout: int = _opt("student", 10, "neighbourhood policy: in-neighbours kept per node at every hop")
    kd: str = _opt("distillation", "auto", "distillation objectives, comma-separated: response,feature,structure "
                                           "(or none); auto: train with response, and with response,structure, keep "
                                           "the best on validation")
    temperature: str = _opt("distillation", "auto", "distillation temperature T > 0, or auto: train with each of "
                            f"{list(TEMPERATURE_GRID)} (with every alpha > 0), keep the best on validation")
    alpha: str = _opt("distillation", "auto",
                      "weight in [0, 1] of the soft-target KL term (1 - alpha weighs the hard-label "
                      f"CE), or auto: train with each of {list(ALPHA_GRID)}, keep the best on validation")
    soft_regularise: str = _opt("distillation", "on",
                                "weight decay and feature dropout for a student trained on soft targets (alpha > "
                                "0): on; off (the teacher's soft labels on every node are then its only regulariser: "
                                "closer to the teacher on the nodes trained on, worse on nodes added later); or "
                                "auto: train each soft-target candidate both ways, keep the best on "
                                "validation (whose nodes are among those trained on)", ("auto", "on", "off"))
    kd_balance: str = _opt("distillation", "off",
                           "class-balanced soft targets: on weighs each node's soft-target KL by the inverse "
                           "share of its teacher-predicted class, so the rare classes the teacher predicts least "
                           "are not outweighed by frequent ones; off: every node weighs the same", ("on", "off"))
    tail_adjust: str = _opt("distillation", "auto", "rare classes: add a shift to the distilled student's logit "
                                                    "of the rarest class, the smallest that brings its validation "
                                                    "recall and its share of predictions over all nodes up to the "
                                                    "scratch student's, giving back at most half of the validation "
                                                    "gain (auto), or never (off)",
                            ("auto", "off"))
    beta: float = _opt("distillation", 1.0, "weight of the feature-distillation term (normalised-embedding MSE)")
    gamma: float = _opt("distillation", 0.1, "weight of the structure-distillation term (LSP neighbourhood KL)")
    structure_weights: str = _opt("distillation", "auto", "structure KD from a gat teacher: the student propagates "
                                                          "with the teacher's attention (attention), its own fixed "
                                                          "weights (fixed), or whichever scores better on validation "
                                                          "(auto)", ("auto", "attention", "fixed"))
    layer_map: str = _opt("distillation", "", "teacher:student layer pairs for feature/structure KD, e.g. 3:1,6:2 "
                                              "(default: every N-th teacher layer)")
    feature_norm: str = _opt("data", "auto", "input normalisation inside the models (auto: row for bag-of-words "
                                             "features (non-negative, mostly zeros), standard otherwise)",
                             ("auto", "none", "row", "standard"))
    epochs: int = _opt("training", 300, "max epochs for every model (same budget for teacher, scratch, distilled)")
    patience: int = _opt("training", 50, "early-stopping patience on the validation metric")
    min_epochs: int = _opt("training", 100, "no early stop before this many epochs")
    lr: float = _opt("training", 0.01, "Adam learning rate")
    weight_decay: float = _opt("training", 5e-4, "Adam weight decay")
    input_dropout: str = _opt("training", "auto",
                              "dropout on the input features of the teacher and every student (at each "
                              "model's own rate): on; off; or auto: on for bag-of-words features, and for dense "
                              "ones whichever the scratch students score better with on validation (trained "
                              "both ways before the teacher)", ("auto", "on", "off"))
    seed: int = _opt("training", 0, "seed for initialisation, dropout and the neighbourhood policy")
    device: str = _opt("job", "auto", "auto (CUDA when present) | cpu | cuda[:N]")

    def __post_init__(self) -> None:
        for f in fields(self):
            choices = f.metadata.get("choices")
            value = getattr(self, f.name)
            if choices and value not in choices:
                raise ConfigError(f"{flag(f.name)} {value!r} is not one of {list(choices)}")
        positive = ("teacher_layers", "gcnii_layers", "teacher_hidden", "teacher_heads", "teacher_restarts",
                    "teacher_ensemble",
                    "student_layers", "student_hidden", "fanout", "epochs", "patience")
        if self.min_epochs < 0:
            raise ConfigError(f"--min-epochs {self.min_epochs} must be >= 0")
        for name in positive:
            if getattr(self, name) < 1:
                raise ConfigError(f"{flag(name)} {getattr(self, name)} must be >= 1")
        if not 0 <= self.seed < 2**63:
            raise ConfigError(f"--seed {self.seed} must lie in [0, 2^63)")
        if self.seed + self.teacher_ensemble > 2**63:  # the members' seeds run to seed + K - 1
            raise ConfigError(f"--teacher-ensemble {self.teacher_ensemble} needs seeds up to --seed {self.seed} + "
                              f"{self.teacher_ensemble - 1}, beyond 2^63 - 1; use a smaller --seed")
        if not 0.0 <= self.teacher_budget < float("inf"):
            raise ConfigError(f"--teacher-budget {self.teacher_budget} must be a number of seconds >= 0 (0 = no limit)")
        if not (0.0 <= self.gcnii_alpha <= 1.0 and self.gcnii_theta > 0):
            raise ConfigError(f"--gcnii-alpha {self.gcnii_alpha} must lie in [0, 1] and --gcnii-theta "
                              f"{self.gcnii_theta} be > 0")
        if self.teacher_fanout < 0:
            raise ConfigError(f"--teacher-fanout {self.teacher_fanout} must be >= 0 (0 = full graph)")
        if self.teacher_ensemble > 1 and self.teacher_fanout:
            # Each member's sample would follow its own seed; the mean teacher is read on one graph.
            raise ConfigError(f"--teacher-ensemble {self.teacher_ensemble} needs the full graph for the teacher; "
                              f"drop --teacher-fanout {self.teacher_fanout}, or use --teacher-ensemble 1")
        object.__setattr__(self, "alpha", str(self.alpha))  # manifests before `auto` hold a float
        parse_alpha(self.alpha)
        if self.kd != "auto":
            parse_kinds(self.kd)
        layer_map(self.layer_map, min(map(self.teacher_depth, self.families)), self.student_layers)
        if self.beta < 0 or self.gamma < 0:
            raise ConfigError(f"--beta {self.beta} and --gamma {self.gamma} must be >= 0")
        object.__setattr__(self, "temperature", str(self.temperature))  # manifests before `auto` hold a float
        parse_temperature(self.temperature)
        for name in ("teacher_dropout", "attn_dropout", "student_dropout"):
            if not 0.0 <= getattr(self, name) < 1.0:
                raise ConfigError(f"{flag(name)} {getattr(self, name)} must lie in [0, 1)")

    @property
    def kd_kinds(self) -> tuple[str, ...]:
        """The objectives every distilled candidate is trained with: --kd's, or under auto the first
        set of KD_AUTO (structure is then one choice among others, never a requirement)."""
        return KD_AUTO[0] if self.kd == "auto" else parse_kinds(self.kd)

    @property
    def kd_sets(self) -> tuple[tuple[str, ...], ...]:
        """The objective sets a distilled student is tried with: --kd's one, or KD_AUTO under auto."""
        return KD_AUTO if self.kd == "auto" else (parse_kinds(self.kd),)

    @property
    def temperatures(self) -> tuple[float, ...]:
        """The distillation temperatures a soft-target student is trained with (one, or the auto grid)."""
        return parse_temperature(self.temperature)

    @property
    def alphas(self) -> tuple[float, ...]:
        """The soft-target weights a distilled student is trained with (one, or the auto grid)."""
        return parse_alpha(self.alpha)

    @property
    def soft_regularisation(self) -> tuple[bool, ...]:
        """Whether a soft-target candidate is trained with weight decay and dropout: both under auto."""
        return {"auto": (True, False), "on": (True,), "off": (False,)}[self.soft_regularise]

    def teacher_family(self, teacher_metrics: dict[str, Any]) -> str:
        """The family of the teacher a run kept (what --teacher auto resolved to): `train_teacher`
        records it in the teacher's metrics; a reused teacher's lack it, and then `teacher` names it."""
        return str(teacher_metrics.get("family", self.teacher))

    def teacher_name(self, teacher_metrics: dict[str, Any]) -> str:
        """The kept teacher as reports name it, family and depth: `gat-6`, `gcnii-16`; an ensemble
        adds its size: `gcnii-64 x3`."""
        family = self.teacher_family(teacher_metrics)
        k = self.teacher_ensemble
        return f"{family}-{self.teacher_depth(family)}" + (f" x{k}" if k > 1 else "")

    @property
    def train_config(self) -> TrainConfig:
        """The optimisation budget, shared by teacher, scratch and distilled runs (torch imported only here)."""
        from distill.train import TrainConfig

        return TrainConfig(self.epochs, self.patience, self.lr, self.weight_decay, self.min_epochs)

    @property
    def students(self) -> tuple[str, ...]:
        """The student families this run trains: AUTO_STUDENTS for auto, else the one named."""
        return AUTO_STUDENTS if self.student == "auto" else (self.student,)

    @property
    def families(self) -> tuple[str, ...]:
        """The teacher families this run trains, in order: AUTO_TEACHERS for auto, else the one named."""
        return AUTO_TEACHERS if self.teacher == "auto" else (self.teacher,)

    def teacher_depth(self, family: str) -> int:
        """Message-passing layers of a `family` teacher: --gcnii-layers for gcnii, else --teacher-layers."""
        return self.gcnii_layers if family == "gcnii" else self.teacher_layers

    @property
    def layer_pairs(self) -> list[tuple[int, int]]:
        """Layer pairs for a --teacher-layers deep teacher (gat, gat-sep, gcn, sage); for another
        depth (a gcnii teacher) use `layer_pairs_for`."""
        return self.layer_pairs_for(self.teacher_layers)

    def layer_pairs_for(self, teacher_depth: int) -> list[tuple[int, int]]:
        """(teacher layer, student layer) pairs for a teacher `teacher_depth` layers deep."""
        return layer_map(self.layer_map, teacher_depth, self.student_layers)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> RunConfig:
        """Rebuild a config (e.g. from a manifest); unknown keys are rejected, not ignored."""
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ConfigError(f"unknown config keys {unknown}; known keys: {sorted(known)}")
        return cls(**values)


def parse_kinds(text: str) -> tuple[str, ...]:
    """`response,feature` -> ("response", "feature"); `none` or empty -> (). Unknown names raise."""
    kinds = tuple(k for k in (t.strip() for t in text.split(",")) if k and k != "none")
    bad = [k for k in kinds if k not in KD_KINDS]
    if bad:
        raise ConfigError(f"--kd {text!r}: unknown {bad}; choose any of {list(KD_KINDS)} (comma-separated), "
                          "none or auto")
    return tuple(k for k in KD_KINDS if k in kinds)


def _grid_or_number(flag: str, text: str, grid: tuple[float, ...], ok: Callable[[float], bool],
                    expected: str) -> tuple[float, ...]:
    """`auto` -> `grid`; a number passing `ok` -> (number,); anything else raises naming `flag` and `expected`."""
    if text == "auto":
        return grid
    try:
        value = float(text)
    except ValueError:
        raise ConfigError(f"{flag} {text!r}: expected {expected} or auto") from None
    if not ok(value):
        raise ConfigError(f"{flag} {text} must be {expected} (or auto)")
    return (value,)


def parse_alpha(text: str) -> tuple[float, ...]:
    """`auto` -> ALPHA_GRID; `0.3` -> (0.3,). Anything else, or a weight outside [0, 1], raises."""
    return _grid_or_number("--alpha", text, ALPHA_GRID, lambda v: 0.0 <= v <= 1.0, "a number in [0, 1]")


def parse_temperature(text: str) -> tuple[float, ...]:
    """`auto` -> TEMPERATURE_GRID; `2` -> (2.0,). Anything else, or T <= 0, raises."""
    return _grid_or_number("--temperature", text, TEMPERATURE_GRID, lambda v: 0.0 < v < float("inf"),
                           "a finite number > 0")


def layer_map(spec: str, teacher_layers: int, student_layers: int) -> list[tuple[int, int]]:
    """Pairs (teacher layer, student layer), 1-based. Default: every N-th teacher layer, so a 6-layer
    teacher and a 2-layer student give [(3, 1), (6, 2)], and a teacher shallower than the student
    pairs its layers with several (a 1-layer one with every student layer, never a layer 0);
    explicit: `2:1,6:2`."""
    if not spec:
        return [(max(1, round(teacher_layers * s / student_layers)), s) for s in range(1, student_layers + 1)]
    pairs = []
    for item in spec.split(","):
        t, sep, s = item.partition(":")
        if not (sep and t.strip().isdigit() and s.strip().isdigit()):
            raise ConfigError(f"--layer-map {spec!r}: expected TEACHER:STUDENT pairs like 3:1,6:2")
        pair = (int(t), int(s))
        if not (1 <= pair[0] <= teacher_layers and 1 <= pair[1] <= student_layers):
            raise ConfigError(f"--layer-map {spec!r}: {item} outside teacher 1..{teacher_layers}, "
                              f"student 1..{student_layers}")
        pairs.append(pair)
    return pairs


def flag(name: str) -> str:
    """The command-line flag of field `name`: `teacher_layers` -> `--teacher-layers`."""
    return "--" + name.replace("_", "-")
