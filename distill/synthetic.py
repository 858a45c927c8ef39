"""A deterministic fraud-like graph: imbalanced classes, tunable homophily, power-law degrees."""

from __future__ import annotations

from dataclasses import dataclass, fields

import numpy as np

from distill.errors import DatasetError


@dataclass(frozen=True)
class SyntheticConfig:
    """Parameters of the generator; every one can be set in the spec (`synthetic:nodes=500,seed=3`)."""

    nodes: int = 2000
    avg_degree: float = 8.0
    features: int = 32
    # Share of edges drawn inside the class; the rest join random nodes (and some of those match too).
    homophily: float = 0.7
    # Class shares, most common first: legit / suspicious / fraud.
    rare_share: float = 0.05
    mid_share: float = 0.20
    signal: float = 0.3
    power: float = 2.5
    seed: int = 0

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
        }
        for key, ok in checks.items():
            if not ok:
                raise DatasetError(f"synthetic: {key}={getattr(self, key)!r} is out of range")

    @classmethod
    def parse(cls, text: str) -> SyntheticConfig:
        """Parse `key=value,key=value`; unknown keys are rejected with the list of known ones."""
        known = {f.name: f.type for f in fields(cls)}
        kwargs: dict[str, object] = {}
        for item in filter(None, text.split(",")):
            key, sep, value = item.partition("=")
            if not sep or key not in known:
                raise DatasetError(
                    f"synthetic: bad option {item!r}; expected key=value with key one of {sorted(known)}"
                )
            try:
                kwargs[key] = int(value) if known[key] == "int" else float(value)
            except ValueError:
                raise DatasetError(f"synthetic: {key}={value!r} is not a {known[key]}") from None
        return cls(**kwargs)  # type: ignore[arg-type]


CLASS_NAMES = ("legit", "suspicious", "fraud")


def generate(cfg: SyntheticConfig) -> dict[str, np.ndarray]:
    """Build the graph as plain arrays.

    Returns `x` float32 [N, F], `y` int64 [N], `edge_index` int64 [2, E] (both directions),
    and `train`/`val`/`test` bool [N] (stratified 40/20/40 split).
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
    masks = _stratified_split(y, rng)
    return {"x": x, "y": y.astype(np.int64), "edge_index": edge_index, **masks}


def _stratified_split(y: np.ndarray, rng: np.random.Generator) -> dict[str, np.ndarray]:
    masks = {name: np.zeros(len(y), dtype=bool) for name in ("train", "val", "test")}
    for c in np.unique(y):
        idx = rng.permutation(np.flatnonzero(y == c))
        a, b = int(round(0.4 * len(idx))), int(round(0.6 * len(idx)))
        masks["train"][idx[: max(a, 1)]] = True
        masks["val"][idx[max(a, 1) : b]] = True
        masks["test"][idx[b:]] = True
    return masks
