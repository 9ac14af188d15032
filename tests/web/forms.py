"""Signing in to the web form as a browser does, and carrying its CSRF token afterwards.

Every state-changing web route wants the page's token: the forms send it as a hidden field, the
scripts in X-CSRF-Token. After `sign_in` the client sends the session's token in that header on
every request, so a test posts a form as it always did; tests/web/test_security.py checks the
hidden field and the refusals.
"""

from __future__ import annotations

import re

from fastapi.testclient import TestClient

from app.web.csrf import CSRF_FIELD, CSRF_HEADER

META_TOKEN = re.compile(r'<meta name="csrf-token" content="([^"]+)">')


def page_token(html: str) -> str:
    """The CSRF token a page carries (base.html's meta tag, the same as its forms' field)."""
    found = META_TOKEN.search(html)
    assert found is not None, "the page has no CSRF token"
    return found.group(1)


def sign_in(client: TestClient, key: str) -> TestClient:
    """Sign in through the sign-in form, with its token; then send the session's token."""
    client.headers.pop(CSRF_HEADER, None)
    form = client.get("/web/sign-in")
    response = client.post("/web/sign-in", data={"api_key": key,
                                                 CSRF_FIELD: page_token(form.text)},
                           follow_redirects=False)
    assert response.status_code == 303, response.text
    client.headers[CSRF_HEADER] = page_token(client.get("/web/models").text)
    return client


def sign_out(client: TestClient) -> TestClient:
    response = client.post("/web/sign-out", follow_redirects=False)
    assert response.status_code == 303, response.text
    client.headers.pop(CSRF_HEADER, None)
    return client
