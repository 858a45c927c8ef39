"""The one "train candidates, keep the best on validation" helper: teacher restarts, the student's
soft-target weight and propagation search, and `distill select` all choose through it."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Generic, TypeVar

T = TypeVar("T")


@dataclass(frozen=True)
class Best(Generic[T]):
    """The kept candidate, its name, and every candidate's validation score by name (in order tried)."""

    item: T
    name: str
    scores: dict[str, float]


def best_on_validation(candidates: Iterable[tuple[str, Callable[[], T]]],
                       key: Callable[[T], tuple[float, ...]], shown: Callable[[T], float] | None = None) -> Best[T]:
    """Build each candidate in turn (only the best so far is kept alive) and keep the one with the
    highest `key` (validation score first, then tie-breaks); the first wins an exact tie. `scores`
    records `shown` of each (default: its key's first element). Raises ValueError when there is no
    candidate."""
    best: tuple[tuple[float, ...], str, T] | None = None
    scores: dict[str, float] = {}
    for name, build in candidates:
        item = build()
        k = key(item)
        scores[name] = float(shown(item) if shown is not None else k[0])
        if best is None or k > best[0]:
            best = (k, name, item)
    if best is None:
        raise ValueError("no candidate to choose from")
    return Best(best[2], best[1], scores)
