"""/docs works offline: the Swagger UI page and its assets come from the service, not a CDN."""

from __future__ import annotations

from pathlib import Path

from fastapi.testclient import TestClient

from serve.app import create_app
from serve.settings import Settings


def test_docs_page_and_assets_are_served_locally() -> None:
    settings = Settings(bundle=Path("/nonexistent"), warmup_runs=0)  # type: ignore[call-arg]
    with TestClient(create_app(settings)) as client:  # the page needs no loaded bundle
        page = client.get("/docs")
        assert page.status_code == 200 and "text/html" in page.headers["content-type"]
        assert "/docs/assets/swagger-ui-bundle.js" in page.text and "cdn" not in page.text.lower()
        for asset, kind in (("swagger-ui-bundle.js", "javascript"), ("swagger-ui.css", "text/css")):
            response = client.get(f"/docs/assets/{asset}")
            assert response.status_code == 200 and kind in response.headers["content-type"], asset
        assert client.get("/redoc").status_code == 404  # CDN-only, so not offered
        assert "/docs" not in client.get("/openapi.json").json()["paths"]
