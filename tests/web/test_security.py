"""The web form's defences, as an attacker would probe them: CSRF on every state-changing route
(sign-in included), sessions that end with their key, an API that ignores the web cookie,
security headers on every response, and Secure cookies behind a TLS proxy."""

from __future__ import annotations

import base64
import hashlib
import re
from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.routing import iter_route_contexts
from fastapi.testclient import TestClient
from sqlalchemy import select

from app.db.tables import WebSession
from app.main import create_app
from app.runtime import Runtime
from app.services.accounts import list_keys, revoke_key
from app.web.csrf import CSRF_COOKIE, CSRF_FIELD, CSRF_HEADER
from app.web.sessions import SESSION_COOKIE
from app.web.templating import WEB_DIR
from tests.api.test_batch_predictions import held_jobs
from tests.conftest import API_KEY, bearer, create_model, make_settings, tree_photos
from tests.web.forms import page_token, sign_in, sign_out

TEMPLATES = WEB_DIR / "templates"
FOREIGN = "https://attacker.example"


def runtime_of(client: TestClient) -> Runtime:
    return client.app.state.runtime  # type: ignore[attr-defined,no-any-return]


@pytest.fixture
def app_client(tmp_path: Path) -> Iterator[TestClient]:
    with TestClient(create_app(make_settings(tmp_path / "data"))) as client:
        yield client


@pytest.fixture
def web(app_client: TestClient) -> TestClient:
    return sign_in(app_client, API_KEY)


def stranger(client: TestClient) -> TestClient:
    """Another browser on the same server: its own cookies."""
    return TestClient(client.app)


def post_routes(client: TestClient) -> list[str]:
    """The path of every route under /web that changes state, once each."""
    routes = iter_route_contexts(client.app.routes)  # type: ignore[attr-defined]
    return sorted({route.path for route in routes
                   if route.path and route.path.startswith("/web")
                   and (route.methods or set()) & {"POST", "PUT", "PATCH", "DELETE"}})


def test_every_state_changing_web_route_refuses_a_request_without_the_token(
        web: TestClient) -> None:
    model_id = create_model(web)
    paths = post_routes(web)
    assert len(paths) >= 20, paths  # the walk covers the whole form, not a sample
    tokenless = stranger(web)
    tokenless.cookies = web.cookies  # signed in, but no token in the header or the form
    for path in paths:
        url = re.sub(r"\{model_id\}", model_id, path)
        url = re.sub(r"\{\w+\}", "1", url)
        response = tokenless.post(url, data={"name": "x", "api_key": API_KEY},
                                  follow_redirects=False)
        assert response.status_code == 403, (path, response.status_code, response.text[:300])
        if path.startswith("/web/json/"):
            assert response.json()["error"]["code"] == "csrf_failed"
        else:
            assert response.headers["content-type"].startswith("text/html")
            assert "security token is missing or out of date" in response.text, path
    wrong = tokenless.post(f"/web/models/{model_id}/delete", data={CSRF_FIELD: "0" * 64})
    assert wrong.status_code == 403
    assert web.get(f"/api/v1/models/{model_id}", headers=bearer()).status_code == 200
    # The same forms with the page's token work: the refusals above were the token's doing.
    assert web.post(f"/web/models/{model_id}/delete", follow_redirects=False).status_code == 303
    assert web.get(f"/api/v1/models/{model_id}", headers=bearer()).status_code == 404


def test_every_post_form_in_the_templates_carries_the_token() -> None:
    forms = 0
    for template in sorted(TEMPLATES.glob("*.html")):
        text = template.read_text()
        for form in re.findall(r"<form\b[^>]*>.*?</form>", text, re.S):
            if re.search(r'method="post"', form.split(">", 1)[0], re.I):
                forms += 1
                assert "{{ csrf_field() }}" in form, (template.name, form[:200])
    assert forms >= 25


def test_templates_have_no_inline_script_or_style() -> None:
    """What the CSP refuses: inline <script> or <style>, style= and on...= attributes."""
    for path in [*TEMPLATES.glob("*.html"), WEB_DIR / "charts.py"]:
        text = path.read_text()
        assert not re.search(r"<script(?![^>]*\bsrc=)", text), path.name
        assert "<style" not in text, path.name
        assert not re.search(r"\sstyle=", text), path.name
        assert not re.search(r"\son[a-z]+=", text), path.name


def test_forms_post_with_the_hidden_field_and_no_script(app_client: TestClient) -> None:
    page = app_client.get("/web/sign-in")
    field = re.search(rf'name="{CSRF_FIELD}" value="([^"]+)"', page.text)
    assert field is not None and field.group(1) == page_token(page.text)
    assert CSRF_COOKIE in app_client.cookies  # the pre-session cookie the token is bound to
    response = app_client.post("/web/sign-in", data={"api_key": API_KEY,
                                                     CSRF_FIELD: field.group(1)},
                               follow_redirects=False)
    assert response.status_code == 303
    models = app_client.get("/web/models")
    assert CSRF_HEADER not in app_client.headers
    created = app_client.post("/web/models", data={
        "name": "trees", "categories": "hemlock, japanese_cherry",
        CSRF_FIELD: page_token(models.text)}, follow_redirects=False)
    assert created.status_code == 303
    # The pre-session token does not serve the session: a token is bound to one browser state.
    stale = app_client.post("/web/models", data={"name": "t", "categories": "a, b",
                                                 CSRF_FIELD: field.group(1)})
    assert stale.status_code == 403


def test_login_csrf_from_a_foreign_page_is_refused(app_client: TestClient) -> None:
    """A foreign page posting the attacker's key into the sign-in form of a visitor's browser
    must not sign that browser into the attacker's account."""
    attacker = stranger(app_client)
    attackers_token = page_token(attacker.get("/web/sign-in").text)
    victim = app_client
    victim.get("/web/sign-in")  # the victim has a pre-session cookie of their own
    forged = {"api_key": API_KEY, CSRF_FIELD: attackers_token}
    for headers in ({"Origin": FOREIGN}, {"Referer": f"{FOREIGN}/trap.html"}, {}):
        response = victim.post("/web/sign-in", data=forged, headers=headers,
                               follow_redirects=False)
        assert response.status_code == 403, headers
        assert SESSION_COOKIE not in response.headers.get("set-cookie", "")
    # Even the victim's own token is refused when the post comes from another site.
    own = {"api_key": API_KEY, CSRF_FIELD: page_token(victim.get("/web/sign-in").text)}
    foreign = victim.post("/web/sign-in", data=own, headers={"Origin": FOREIGN},
                          follow_redirects=False)
    assert foreign.status_code == 403 and "sent from another site" in foreign.text
    assert victim.post("/web/sign-in", data=own, headers={"Origin": "null"},
                       follow_redirects=False).status_code == 403
    # A browser without the cookie (SameSite=Strict keeps it off cross-site posts): refused.
    bare = stranger(app_client)
    assert bare.post("/web/sign-in", data=forged, follow_redirects=False).status_code == 403
    assert victim.get("/web/models", follow_redirects=False).status_code == 303  # not signed in
    same = victim.post("/web/sign-in", data=own, headers={"Origin": "http://testserver"},
                       follow_redirects=False)
    assert same.status_code == 303


def test_a_signed_in_browsers_token_is_bound_to_its_session(web: TestClient) -> None:
    """An attacker who plants their own pre-session cookie in a signed-in browser (from a
    sibling subdomain, say) still cannot forge its forms: they need the session's token."""
    attacker = stranger(web)
    attackers_token = page_token(attacker.get("/web/sign-in").text)
    planted = attacker.cookies[CSRF_COOKIE]
    web.cookies.delete(CSRF_COOKIE)
    web.cookies.set(CSRF_COOKIE, planted)
    assert [c.value for c in web.cookies.jar if c.name == CSRF_COOKIE] == [planted]
    web.headers.pop(CSRF_HEADER)
    forged = web.post("/web/models", data={"name": "t", "categories": "a, b",
                                           CSRF_FIELD: attackers_token})
    assert forged.status_code == 403
    assert web.get("/api/v1/models", headers=bearer()).json()["models"] == []


def test_a_foreign_origin_is_refused_even_with_the_token(web: TestClient) -> None:
    response = web.post("/web/models", data={"name": "t", "categories": "a, b"},
                        headers={"Origin": FOREIGN})
    assert response.status_code == 403 and "sent from another site" in response.text
    assert web.get("/api/v1/models", headers=bearer()).json()["models"] == []


def test_a_revoked_key_ends_its_web_sessions_at_once(web: TestClient) -> None:
    assert web.get("/web/models").status_code == 200
    with runtime_of(web).session_factory() as session:
        [listing] = list_keys(session)
        _, _, ended = revoke_key(session, key_id=listing.key.id)
    assert ended == 1
    page = web.get("/web/models", follow_redirects=False)
    assert page.status_code == 303 and page.headers["location"] == "/web/sign-in"
    refused = web.post("/web/models", data={"name": "t", "categories": "a, b"},
                       follow_redirects=False)
    assert refused.status_code == 303  # to sign in; nothing made
    script = web.get("/web/json/jobs/0123456789abcdef")
    assert script.status_code == 401 and script.json()["error"]["code"] == "signed_out"
    assert web.get("/api/v1/models", headers=bearer()).status_code == 401
    form = web.get("/web/sign-in")
    again = web.post("/web/sign-in", data={"api_key": API_KEY, CSRF_FIELD: page_token(form.text)},
                     follow_redirects=False)
    assert again.status_code == 401 and "not valid" in again.text


def test_sign_out_ends_the_session_on_the_server(web: TestClient) -> None:
    cookie = web.cookies[SESSION_COOKIE]
    assert API_KEY not in cookie
    sign_out(web)
    replay = stranger(web)
    replay.cookies.set(SESSION_COOKIE, cookie)
    assert replay.get("/web/models", follow_redirects=False).status_code == 303


def test_a_forged_or_expired_session_cookie_opens_nothing(tmp_path: Path) -> None:
    settings = make_settings(tmp_path / "data", session_max_age=60)
    with TestClient(create_app(settings)) as client:
        sign_in(client, API_KEY)
        cookie = client.cookies[SESSION_COOKIE]
        token, stamp, signature = cookie.split(".")
        forged = stranger(client)
        forged.cookies.set(SESSION_COOKIE, f"{token}x.{stamp}.{signature}")
        assert forged.get("/web/models", follow_redirects=False).status_code == 303
        bare = stranger(client)
        bare.cookies.set(SESSION_COOKIE, token)  # the token without its signature
        assert bare.get("/web/models", follow_redirects=False).status_code == 303
    with TestClient(create_app(make_settings(tmp_path / "data", session_max_age=60))) as later:
        with runtime_of(later).session_factory() as session:
            row = session.scalars(select(WebSession)).one()
            row.expires_at = row.created_at  # its time is up, though the cookie's is not
            session.commit()
        later.cookies.set(SESSION_COOKIE, cookie)
        assert later.get("/web/models", follow_redirects=False).status_code == 303


def test_the_api_refuses_the_web_cookie(web: TestClient) -> None:
    model_id = create_model(web)
    assert web.get("/web/models").status_code == 200  # the session works on the web form...
    for path in ("/api/v1/models", f"/api/v1/models/{model_id}", "/api/v1/webhooks"):
        response = web.get(path)  # ...but is no credential for the API
        assert response.status_code == 401, path
        assert response.json()["error"]["code"] == "missing_api_key"
    assert web.post(f"/api/v1/models/{model_id}/train").status_code == 401
    old = stranger(web)
    old.cookies.set("nanonet_key", API_KEY)  # what the cookie held before sessions
    assert old.get("/api/v1/models").status_code == 401
    cleared = old.get("/web/sign-in")
    assert 'nanonet_key=""' in ";".join(cleared.headers.get_list("set-cookie"))


def test_the_scripts_routes_upload_and_follow_jobs_under_the_session(web: TestClient) -> None:
    model_id = create_model(web)
    with held_jobs(web):  # extraction and training stay queued: only their rows matter here
        for label in ("hemlock", "japanese_cherry"):
            photo = tree_photos(label)[0]
            uploaded = web.post(f"/web/json/models/{model_id}/images", data={"category": label},
                                files=[("files", (photo.name, photo.read_bytes(), "image/jpeg"))])
            assert uploaded.status_code == 200, uploaded.text
            assert uploaded.json()["accepted"] == 1
            assert uploaded.json()["results"][0]["status"] == "accepted"
        refused = web.post(f"/web/json/models/{model_id}/images", data={"category": "oak"},
                           files=[("files", (photo.name, photo.read_bytes(), "image/jpeg"))])
        assert refused.status_code == 422 and refused.json()["error"]["code"]
        job_id = web.post(f"/api/v1/models/{model_id}/train", headers=bearer()).json()["job_id"]
    job = web.get(f"/web/json/jobs/{job_id}")
    assert job.status_code == 200 and job.json()["id"] == job_id
    assert stranger(web).get(f"/web/json/jobs/{job_id}").status_code == 401
    page = web.get(f"/web/models/{model_id}").text
    assert f'data-upload-url="/web/json/models/{model_id}/images"' in page
    assert "/api/v1" not in page  # nothing on a page needs the API's credentials


def response_kinds(client: TestClient) -> dict[str, object]:
    model_id = create_model(client)
    return {
        "page": client.get("/web/models"),
        "sign-in": client.get("/web/sign-in"),
        "redirect": stranger(client).get("/web/models", follow_redirects=False),
        "web 404": client.get("/web/nowhere"),
        "csrf 403": stranger(client).post("/web/models"),
        "static": client.get("/static/app.js"),
        "api json": client.get(f"/api/v1/models/{model_id}", headers=bearer()),
        "api 401": client.get("/api/v1/models"),
        "api 404": client.get("/api/v1/nowhere"),
        "health": client.get("/health"),
        "openapi": client.get("/openapi.json"),
        "docs": client.get("/docs"),
        "docs asset": client.get("/docs/assets/swagger-ui-bundle.js"),
    }


def test_security_headers_on_every_response(web: TestClient) -> None:
    for kind, response in response_kinds(web).items():
        headers = response.headers  # type: ignore[attr-defined]
        policy = headers.get("content-security-policy", "")
        assert "frame-ancestors 'none'" in policy, kind
        assert "unsafe-inline" not in policy and "unsafe-eval" not in policy, kind
        assert "script-src 'self'" in policy and "style-src 'self';" in policy, kind
        assert headers.get("x-content-type-options") == "nosniff", kind
        assert headers.get("referrer-policy") == "same-origin", kind
        assert headers.get("x-frame-options") == "DENY", kind


def test_docs_come_from_our_own_files(web: TestClient) -> None:
    docs = web.get("/docs")
    assert docs.status_code == 200
    sources = re.findall(r'(?:src|href)="([^"]+)"', docs.text)
    assert sources and all(url.startswith("/docs/assets/") for url in sources), sources
    for url in sources:
        assert web.get(url).status_code == 200, url
    # Its one inline script (Swagger UI's start) is allowed by hash, not by 'unsafe-inline'.
    [script] = re.findall(r"<script>(.*?)</script>", docs.text, re.S)
    digest = base64.b64encode(hashlib.sha256(script.encode()).digest()).decode()
    assert f"'sha256-{digest}'" in docs.headers["content-security-policy"]
    assert web.get("/redoc").status_code == 404  # ReDoc would come from a CDN


def test_docs_can_be_turned_off(tmp_path: Path) -> None:
    with TestClient(create_app(make_settings(tmp_path / "data", docs=False))) as client:
        assert client.get("/docs").status_code == 404
        assert client.get("/docs/assets/swagger-ui.css").status_code == 404
        assert client.get("/openapi.json").status_code == 200  # clients still read the schema


def set_cookie(response: object, name: str) -> str:
    headers = response.headers.get_list("set-cookie")  # type: ignore[attr-defined]
    return str(next(c for c in headers if c.startswith(f"{name}=")))


def session_cookie_of(client: TestClient, headers: dict[str, str]) -> str:
    """Sign in through `headers` (a proxy's); the session's Set-Cookie, lower case. The test
    client talks plain http, so it would keep a Secure cookie to itself: it is sent by hand."""
    form = client.get("/web/sign-in", headers=headers)
    visitor = set_cookie(form, CSRF_COOKIE).split(";", 1)[0]
    response = client.post("/web/sign-in", headers={**headers, "Cookie": visitor},
                           follow_redirects=False,
                           data={"api_key": API_KEY, CSRF_FIELD: page_token(form.text)})
    assert response.status_code == 303, response.text
    return set_cookie(response, SESSION_COOKIE).lower()


@pytest.mark.parametrize(("allowed", "client_host", "secure"), [
    ("*", "10.0.0.2", True),
    ("10.0.0.2", "10.0.0.2", True),
    ("10.0.0.0/8", "10.0.0.2", True),
    ("10.0.0.2", "192.0.2.7", False),  # not the proxy: its X-Forwarded-Proto is not believed
    (None, "10.0.0.2", False),  # no proxy configured
])
def test_forwarded_https_from_a_trusted_proxy_gives_secure_cookies(
        tmp_path: Path, allowed: str | None, client_host: str, secure: bool) -> None:
    settings = make_settings(tmp_path / "data", forwarded_allow_ips=allowed)
    proxied = {"X-Forwarded-Proto": "https", "X-Forwarded-For": "203.0.113.9"}
    with TestClient(create_app(settings), client=(client_host, 4711)) as client:
        assert ("; secure" in session_cookie_of(client, proxied)) is secure
        # The browser's Origin is the proxy's https one: it passes exactly when it is believed.
        origin = {**proxied, "Origin": "https://testserver"}
        if secure:
            assert "; secure" in session_cookie_of(client, origin)
        else:
            form = client.get("/web/sign-in")
            refused = client.post("/web/sign-in", headers=origin, data={
                "api_key": API_KEY, CSRF_FIELD: page_token(form.text)})
            assert refused.status_code == 403


def test_nanonet_serve_hands_the_proxy_setting_to_uvicorn(
        monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    import uvicorn

    from app.cli import main

    seen: list[dict[str, object]] = []
    monkeypatch.setattr(uvicorn, "run", lambda app, **kwargs: seen.append(kwargs))
    monkeypatch.setenv("NANONET_DATA_DIR", str(tmp_path))
    monkeypatch.setenv("NANONET_FORWARDED_ALLOW_IPS", "10.0.0.2,10.0.0.3")
    assert main(["serve"]) == 0
    monkeypatch.delenv("NANONET_FORWARDED_ALLOW_IPS")
    assert main(["serve"]) == 0
    assert seen[0]["proxy_headers"] is True
    assert seen[0]["forwarded_allow_ips"] == "10.0.0.2,10.0.0.3"
    assert seen[1]["proxy_headers"] is False  # uvicorn would otherwise believe 127.0.0.1
