"""The webhook pages, driven like a browser with JavaScript off: register (the secret shown
once), send a test event and read its delivery, change, disable, delete; strangers see 404."""

from __future__ import annotations

import re
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from app.main import create_app
from app.services.accounts import create_account
from app.services.webhooks import EVENTS
from tests.api.test_webhooks import verifies
from tests.conftest import make_settings
from tests.http_receiver import Receiver
from tests.web.forms import sign_in, sign_out

KEY = "nn_web_hooks_alpha_0123456789abcdef"  # bootstrap keys: 32+ characters
OTHER_KEY = "nn_web_hooks_bravo"


@pytest.fixture
def web(tmp_path: Path) -> Iterator[TestClient]:
    settings = make_settings(tmp_path / "data", bootstrap_api_key=KEY, url_allow_private=True,
                             webhook_retry_delays=[0.2], webhook_timeout=2)
    with TestClient(create_app(settings)) as client:
        with client.app.state.runtime.session_factory() as session:  # type: ignore[attr-defined]
            create_account(session, name="other", key=OTHER_KEY)
        yield sign_in(client, KEY)


def register(web: TestClient, url: str, events: tuple[str, ...] = EVENTS) -> tuple[str, str]:
    """Register through the form; return (webhook id, secret) as the page shows them."""
    response = web.post("/web/webhooks", data={"url": url, "events": list(events),
                                               "description": "my receiver"})
    assert response.status_code == 201, response.text
    webhook_id = re.search(r'data-replace-url="/web/webhooks/(\w+)"', response.text)
    secret = re.search(r"<code class=\"secret-value\" data-secret>(whsec_[^<]+)</code>",
                       response.text)
    assert webhook_id and secret, response.text
    assert "shown only this once" in response.text
    return webhook_id.group(1), secret.group(1)


def test_a_webhook_is_registered_and_its_secret_shown_once(web: TestClient,
                                                           receiver: Receiver) -> None:
    webhook_id, secret = register(web, receiver.url())
    listing = web.get("/web/webhooks")
    assert receiver.url() in listing.text and f"/web/webhooks/{webhook_id}" in listing.text
    page = web.get(f"/web/webhooks/{webhook_id}")
    assert page.status_code == 200
    assert secret not in page.text and "my receiver" in page.text
    assert "Nothing sent yet." in page.text
    assert 'href="/web/webhooks"' in web.get("/web/models").text  # in the navigation


@pytest.mark.parametrize(("data", "message"), [
    ({"url": "ftp://example.com/hook", "events": ["training.succeeded"]}, "Only http and https"),
    ({"url": "http://127.0.0.1:1/hook"}, "Subscribe to at least one event"),
])
def test_a_refused_form_says_why_and_keeps_what_was_typed(web: TestClient, data: dict[str, object],
                                                          message: str) -> None:
    response = web.post("/web/webhooks", data=data)
    assert response.status_code == 422
    assert message in response.text
    assert f'value="{data["url"]}"' in response.text
    assert "No webhooks yet." in response.text


def test_the_test_button_sends_a_signed_event_and_the_log_shows_it(web: TestClient,
                                                                   receiver: Receiver) -> None:
    webhook_id, secret = register(web, receiver.url())
    sent = web.post(f"/web/webhooks/{webhook_id}/test", follow_redirects=False)
    assert sent.status_code == 303
    assert sent.headers["location"].startswith(f"/web/webhooks/{webhook_id}?sent=msg_")
    [request] = receiver.wait_for(1)
    assert verifies(secret, request)

    deadline = time.monotonic() + 15
    while 'data-status="pending"' in (page := web.get(sent.headers["location"])).text:
        assert "data-reload-after" in page.text  # the page refreshes itself meanwhile
        assert time.monotonic() < deadline
        time.sleep(0.05)
    assert 'data-status="succeeded"' in page.text and "HTTP 200" in page.text
    assert "webhook.test" in page.text and "data-reload-after" not in page.text
    assert request.headers["webhook-id"] in page.text


def test_a_failing_receiver_shows_each_attempt(web: TestClient, receiver: Receiver) -> None:
    receiver.default = 500
    webhook_id, _ = register(web, receiver.url())
    web.post(f"/web/webhooks/{webhook_id}/test")
    receiver.wait_for(2)
    deadline = time.monotonic() + 15
    while 'data-status="failed"' not in (page := web.get(f"/web/webhooks/{webhook_id}")).text:
        assert time.monotonic() < deadline
        time.sleep(0.05)
    assert page.text.count("HTTP 500 · HTTP 500: receiver says no") == 2


def test_settings_change_disable_and_delete(web: TestClient, receiver: Receiver) -> None:
    webhook_id, _ = register(web, receiver.url())
    saved = web.post(f"/web/webhooks/{webhook_id}",
                     data={"url": receiver.url("/moved"), "events": ["training.failed"],
                           "description": "moved"}, follow_redirects=False)  # enabled unticked
    assert saved.status_code == 303
    page = web.get(saved.headers["location"])
    assert "Saved." in page.text and receiver.url("/moved") in page.text
    assert ">disabled<" in page.text
    assert re.search(r'value="training.failed" checked', page.text)
    assert not re.search(r'value="training.succeeded" checked', page.text)
    refused = web.post(f"/web/webhooks/{webhook_id}/test")
    assert refused.status_code == 409 and "disabled" in refused.text

    bad = web.post(f"/web/webhooks/{webhook_id}", data={"url": "gopher://x", "events": [
        "training.failed"], "enabled": "1"})
    assert bad.status_code == 422 and "Only http and https" in bad.text

    deleted = web.post(f"/web/webhooks/{webhook_id}/delete", follow_redirects=False)
    assert deleted.status_code == 303 and deleted.headers["location"] == "/web/webhooks"
    assert "No webhooks yet." in web.get("/web/webhooks").text
    assert web.get(f"/web/webhooks/{webhook_id}").status_code == 404
    assert receiver.requests == []


def test_another_accounts_webhook_is_404_and_strangers_sign_in(web: TestClient,
                                                               receiver: Receiver) -> None:
    webhook_id, _ = register(web, receiver.url())
    sign_in(sign_out(web), OTHER_KEY)
    assert "No webhooks yet." in web.get("/web/webhooks").text
    for response in (web.get(f"/web/webhooks/{webhook_id}"),
                     web.post(f"/web/webhooks/{webhook_id}/test"),
                     web.post(f"/web/webhooks/{webhook_id}", data={"url": receiver.url(),
                                                                   "events": ["training.failed"]}),
                     web.post(f"/web/webhooks/{webhook_id}/delete")):
        assert response.status_code == 404
    sign_out(web)
    response = web.get("/web/webhooks", follow_redirects=False)
    assert response.status_code == 303 and response.headers["location"] == "/web/sign-in"
    assert receiver.requests == []
