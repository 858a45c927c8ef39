"""The one error of the contract. Each side maps it to its own world (exit code 2, HTTP 503 / 422)."""

from __future__ import annotations

from typing import Any


class BundleInvalid(Exception):
    """A bundle (or a part of one) breaks the contract. `detail` names the file to blame, if any."""

    def __init__(self, message: str, detail: dict[str, Any] | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.detail = detail
