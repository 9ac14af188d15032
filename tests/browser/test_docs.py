"""/docs in a real browser: Swagger UI renders from the server's own files, under its CSP."""

from __future__ import annotations

import pytest
from playwright.sync_api import Page, expect

from bench.server import Server
from tests.browser.conftest import Artifacts

pytestmark = pytest.mark.slow


def test_docs_render_without_any_other_site(page: Page, server: Server,
                                            artifacts: Artifacts) -> None:
    elsewhere: list[str] = []
    page.on("request", lambda request: None if request.url.startswith(server.url)
            or request.url.startswith("data:") else elsewhere.append(request.url))
    page.goto("/docs")
    expect(page.locator(".swagger-ui .info .title")).to_contain_text("NanoNet", timeout=30_000)
    expect(page.locator(".opblock-tag-section").first).to_be_visible()
    artifacts.shot(page, "docs")
    assert not elsewhere, artifacts.note(f"/docs reached other sites: {elsewhere}")
