"""The paths the service answers, from its routers (no app or bundle needed)."""

from __future__ import annotations

from serve.routes import admin, docs, health, v1, v2


def served_paths() -> frozenset[str]:
    return frozenset(str(getattr(r, "path", "")) for m in (health, v1, v2, admin, docs) for r in m.router.routes)
