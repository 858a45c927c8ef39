"""GET /docs: the Swagger UI from assets shipped with the service (the swagger-ui-bundle package), not
from a CDN, so the page works on an offline or firewalled host. ReDoc (CDN-only) is not offered."""

from __future__ import annotations

import swagger_ui_bundle
from fastapi import APIRouter, FastAPI
from fastapi.openapi.docs import get_swagger_ui_html
from fastapi.responses import HTMLResponse
from fastapi.staticfiles import StaticFiles

ASSETS = "/docs/assets"
router = APIRouter(include_in_schema=False)


@router.get("/docs")
async def docs() -> HTMLResponse:
    return get_swagger_ui_html(openapi_url="/openapi.json", title="graph-distill scoring service",
                               swagger_js_url=f"{ASSETS}/swagger-ui-bundle.js",
                               swagger_css_url=f"{ASSETS}/swagger-ui.css",
                               swagger_favicon_url=f"{ASSETS}/favicon-32x32.png")


def install(app: FastAPI) -> None:
    """Serve the Swagger UI's files under ASSETS and the page at /docs (FastAPI's own is turned off)."""
    app.mount(ASSETS, StaticFiles(directory=swagger_ui_bundle.swagger_ui_path), name="docs-assets")
    app.include_router(router)
