"""A deterministic fraud-like graph: imbalanced classes, tunable homophily, power-law degrees."""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from typing import Any, TypeVar

import numpy as np

from distill.errors import DatasetError

VAL_SHARE = 0.2  # of every class; the rest after train and validation is test


@dataclass(frozen=True)
class SyntheticConfig:
    """Parameters of the generator; every one can be set in the spec (`synthetic:nodes=500,seed=3`).

    nodes, avg_degree, features: graph size, mean degree, feature width.
    homophily: share of edges drawn inside the class (the rest join random nodes, some of which match too).
    rare_share, mid_share: class shares of fraud and suspicious (legit is the rest).
    signal: how far the class centroids sit apart, in units of the per-node feature noise.
    power: Pareto exponent of the degree weights (power-law degrees; smaller = heavier hubs).
    train_share: labelled share of every class (validation is 20 %, test the rest).
    seed: seeds everything: graph, features and split.
    ids: `int` (node i is id i) or `str` (node i is `acct-%06d`, a graph keyed by strings: the bundle
      serves string ids, bundle.ids). Only the names differ: the same seed gives the same graph.

    The defaults make the quickstart show why distillation pays, for two real reasons. A node's own
    features say little (signal 0.08), but 90 % of its edges are drawn inside its class, so a model's
    estimate improves with every hop of neighbours it averages: a 6-layer teacher averages far more
    of them than a 2-layer student, even one that reads its neighbours' exact feature mean (sage-res:
    three hops in all, enough to match the teacher at signal 0.15). And few nodes are labelled
    (4 %), so a student trained alone fits some 80 labels, while a distilled one also learns from
    the teacher's soft labels on every other node.
    """

    nodes: int = 2000
    avg_degree: float = 8.0
    features: int = 32
    homophily: float = 0.9
    # Class shares, most common first: legit / suspicious / fraud.
    rare_share: float = 0.08
    mid_share: float = 0.20
    signal: float = 0.08
    power: float = 2.5
    train_share: float = 0.04
    seed: int = 0
    ids: str = "int"

    def __post_init__(self) -> None:
        checks = {
            "nodes": self.nodes >= 20,
            "avg_degree": 0 < self.avg_degree < self.nodes,
            "features": self.features >= 1,
            "homophily": 0.0 <= self.homophily <= 1.0,
            "rare_share": 0 < self.rare_share < 0.5,
            "mid_share": self.mid_share > 0 and self.rare_share + self.mid_share < 1,
            "signal": self.signal >= 0,
            "power": self.power > 1.0,
            "train_share": 0 < self.train_share <= 1 - VAL_SHARE - 0.1,
            "seed": self.seed >= 0,  # numpy's generators take no negative seed
        }
        if self.ids not in ID_KINDS:
            raise DatasetError(f"synthetic: ids={self.ids!r}; expected one of {list(ID_KINDS)}")
        for key, ok in checks.items():
            if not ok:
                raise DatasetError(f"synthetic: {key}={getattr(self, key)!r} is out of range")

    @classmethod
    def parse(cls, text: str) -> SyntheticConfig:
        """Parse `key=value,key=value`; unknown keys are rejected with the list of known ones."""
        return parse_options(cls, text, "synthetic")

    def record(self) -> dict[str, Any]:
        """The options as the dataset's source records them. `ids` only when not the default: the record
        enters the bundle's version digest, so int-id graphs keep the versions of earlier releases."""
        options = asdict(self)
        if self.ids == "int":
            del options["ids"]
        return options


Options = TypeVar("Options")


def parse_options(cls: type[Options], text: str, kind: str) -> Options:
    """A generator's options dataclass `cls` from `key=value,key=value` (int, float and str fields);
    DatasetError, prefixed `kind`, naming a bad item with the known keys, or a value of the wrong type."""
    known = {f.name: f.type for f in fields(cls)}  # type: ignore[arg-type]  # cls is a dataclass
    kwargs: dict[str, object] = {}
    for item in filter(None, text.split(",")):
        key, sep, value = item.partition("=")
        if not sep or key not in known:
            raise DatasetError(f"{kind}: bad option {item!r}; expected key=value with key one of {sorted(known)}")
        try:
            kwargs[key] = {"int": int, "float": float, "str": str}[str(known[key])](value)
        except ValueError:
            raise DatasetError(f"{kind}: {key}={value!r} is not a {known[key]}") from None
    return cls(**kwargs)

CLASS_NAMES = ("legit", "suspicious", "fraud")
ID_KINDS = ("int", "str")
ID_FORMAT = "acct-{:06d}"


def node_ids(cfg: SyntheticConfig) -> np.ndarray | None:
    """The graph's external ids [N]: None (ids 0..N-1) or, with `ids=str`, `acct-000000`, ... as <U{w}."""
    if cfg.ids == "int":
        return None
    return np.array([ID_FORMAT.format(i) for i in range(cfg.nodes)])


def generate(cfg: SyntheticConfig) -> dict[str, np.ndarray]:
    """Build the graph as plain arrays.

    Returns `x` float32 [N, F], `y` int64 [N], `edge_index` int64 [2, E] (both directions),
    and `train`/`val`/`test` bool [N] (stratified: `train_share` / 20 % / the rest of every class).
    """
    rng = np.random.default_rng(cfg.seed)
    n = cfg.nodes
    shares = np.array([1 - cfg.mid_share - cfg.rare_share, cfg.mid_share, cfg.rare_share])
    y = rng.choice(3, size=n, p=shares)
    y[:3] = [0, 1, 2]  # every class exists, even on tiny graphs
    # Chung-Lu style: an edge end is drawn in proportion to a Pareto weight -> power-law degrees.
    weight = rng.pareto(cfg.power - 1, size=n) + 1.0
    num_edges = int(n * cfg.avg_degree / 2)
    src = rng.choice(n, size=num_edges, p=weight / weight.sum())
    same = rng.random(num_edges) < cfg.homophily
    dst = np.empty(num_edges, dtype=np.int64)
    for c in range(3):
        members = np.flatnonzero(y == c)
        pick = same & (y[src] == c)
        p = weight[members] / weight[members].sum()
        dst[pick] = rng.choice(members, size=int(pick.sum()), p=p)
    other = ~same
    dst[other] = rng.choice(n, size=int(other.sum()), p=weight / weight.sum())
    keep = src != dst
    pairs = np.unique(np.sort(np.stack([src[keep], dst[keep]]), axis=0), axis=1)
    edge_index = np.concatenate([pairs, pairs[::-1]], axis=1).astype(np.int64)
    # Informative but noisy: class centroids sit `signal` apart in a random direction, noise is unit.
    centroids = rng.normal(size=(3, cfg.features)) * cfg.signal
    x = (centroids[y] + rng.normal(size=(n, cfg.features))).astype(np.float32)
    masks = stratified_masks(y, rng, cfg.train_share)
    return {"x": x, "y": y.astype(np.int64), "edge_index": edge_index, **masks}


def stratified_masks(y: np.ndarray, rng: np.random.Generator, share: float) -> dict[str, np.ndarray]:
    """Seeded per-class split: `share` of each class for training (at least one), the next VAL_SHARE
    for validation, the rest test -> bool masks [N] by name. Shared by the homogeneous and heterogeneous generators."""
    masks = {name: np.zeros(len(y), dtype=bool) for name in ("train", "val", "test")}
    for c in np.unique(y):
        idx = rng.permutation(np.flatnonzero(y == c))
        # At least one labelled node per class, or a tiny graph's rarest class could never be learnt.
        a = max(int(round(share * len(idx))), 1)
        b = max(int(round((share + VAL_SHARE) * len(idx))), a)
        masks["train"][idx[:a]] = True
        masks["val"][idx[a:b]] = True
        masks["test"][idx[b:]] = True
    return masks
