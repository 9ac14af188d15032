"""/docs: Swagger UI from the files the fastapi-offline wheel ships, never from a CDN."""

from __future__ import annotations

import base64
import hashlib
import re
from importlib.resources import files

from fastapi import FastAPI
from fastapi.openapi.docs import get_swagger_ui_html
from fastapi.responses import HTMLResponse
from fastapi.staticfiles import StaticFiles

from app.api.security_headers import CONTENT_SECURITY_POLICY

DOCS_PATH = "/docs"
ASSETS_PATH = "/docs/assets"
ASSETS_DIR = files("fastapi_offline") / "static"
INLINE_SCRIPT = re.compile(r"<script>(.*?)</script>", re.S)


def docs_page(openapi_url: str) -> HTMLResponse:
    """Swagger UI's page; its one inline script (the start-up call FastAPI writes) is allowed by
    its hash in this page's CSP, nothing else inline is."""
    page = get_swagger_ui_html(
        openapi_url=openapi_url, title="NanoNet API",
        swagger_js_url=f"{ASSETS_PATH}/swagger-ui-bundle.js",
        swagger_css_url=f"{ASSETS_PATH}/swagger-ui.css",
        swagger_favicon_url=f"{ASSETS_PATH}/favicon.png",
        swagger_ui_parameters={"validatorUrl": None})  # else it loads a badge from swagger.io
    hashes = " ".join(
        "'sha256-" + base64.b64encode(hashlib.sha256(script.encode()).digest()).decode() + "'"
        for script in INLINE_SCRIPT.findall(bytes(page.body).decode()))
    page.headers["Content-Security-Policy"] = CONTENT_SECURITY_POLICY.replace(
        "script-src 'self'", f"script-src 'self' {hashes}")
    return page


def mount_docs(app: FastAPI) -> None:
    """Serve /docs and its assets on `app` (made with docs_url=None, redoc_url=None)."""
    openapi_url = app.openapi_url or "/openapi.json"
    app.mount(ASSETS_PATH, StaticFiles(directory=str(ASSETS_DIR)), name="docs-assets")

    @app.get(DOCS_PATH, include_in_schema=False)
    def docs() -> HTMLResponse:
        return docs_page(openapi_url)
