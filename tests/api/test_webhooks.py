from __future__ import annotations

import base64
import hashlib
import hmac
import json
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from app.main import create_app
from app.services.accounts import authenticate, create_account
from app.services.webhooks import EVENTS, emit
from tests.conftest import API_KEY, OTHER_KEY, bearer, create_model, make_settings
from tests.http_receiver import Received, Receiver

# Attempts: 1 + len(delays).
FAST_RETRIES = [0.2, 0.4]


@contextmanager
def running_api(data_dir: Path, **overrides: object) -> Iterator[TestClient]:
    values: dict[str, object] = {"url_allow_private": True,
                                 "webhook_retry_delays": FAST_RETRIES, "webhook_timeout": 2}
    values.update(overrides)
    with TestClient(create_app(make_settings(data_dir, **values))) as client:
        yield client


@pytest.fixture
def api(tmp_path: Path) -> Iterator[TestClient]:
    with running_api(tmp_path / "data") as client:
        yield client


def register(client: TestClient, url: str, events: tuple[str, ...] = ("training.succeeded",),
             key: str = API_KEY, **extra: Any) -> dict[str, Any]:
    response = client.post("/api/v1/webhooks", json={"url": url, "events": list(events),
                                                     **extra}, headers=bearer(key))
    assert response.status_code == 201, response.text
    return response.json()


def deliveries(client: TestClient, webhook_id: str) -> list[dict[str, Any]]:
    response = client.get(f"/api/v1/webhooks/{webhook_id}/deliveries", headers=bearer())
    assert response.status_code == 200, response.text
    return response.json()["items"]


def wait_for_delivery(client: TestClient, webhook_id: str, delivery_id: str,
                      until: Callable[[dict[str, Any]], bool] = lambda d: d["status"] != "pending",
                      timeout: float = 15) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while True:
        [delivery] = [d for d in deliveries(client, webhook_id) if d["id"] == delivery_id]
        if until(delivery):
            return delivery
        if time.monotonic() > deadline:
            raise AssertionError(f"delivery still {delivery} after {timeout} s")
        time.sleep(0.05)


def send_test(client: TestClient, webhook_id: str) -> dict[str, Any]:
    response = client.post(f"/api/v1/webhooks/{webhook_id}/test", headers=bearer())
    assert response.status_code == 202, response.text
    return response.json()


def wait_for_job(client: TestClient, job_id: str, timeout: float = 15) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while True:
        job = client.get(f"/api/v1/jobs/{job_id}", headers=bearer()).json()
        if job["status"] in ("succeeded", "failed"):
            return job
        if time.monotonic() > deadline:
            raise AssertionError(f"job still {job} after {timeout} s")
        time.sleep(0.05)


def verifies(secret: str, request: Received) -> bool:
    """The receiver's side of Standard Webhooks, written from the spec alone."""
    assert secret.startswith("whsec_")
    key = base64.b64decode(secret[len("whsec_"):])
    signed = (f"{request.headers['webhook-id']}.{request.headers['webhook-timestamp']}."
              .encode() + request.body)
    expected = "v1," + base64.b64encode(hmac.new(key, signed, hashlib.sha256).digest()).decode()
    return any(hmac.compare_digest(expected, given)
               for given in request.headers["webhook-signature"].split(" "))


def test_an_endpoint_is_created_read_changed_and_deleted(api: TestClient,
                                                         receiver: Receiver) -> None:
    created = register(api, receiver.url(), events=("training.succeeded", "training.failed"),
                       description="  CI notifier  ")
    secret = created["secret"]
    assert secret.startswith("whsec_") and len(base64.b64decode(secret[6:])) == 24
    assert created["events"] == ["training.succeeded", "training.failed"]
    assert created["enabled"] is True and created["model_id"] is None
    assert created["description"] == "CI notifier"
    webhook_id = created["id"]

    read = api.get(f"/api/v1/webhooks/{webhook_id}", headers=bearer())
    assert read.status_code == 200
    assert "secret" not in read.json() and secret not in read.text
    assert read.json()["url"] == receiver.url()

    changed = api.patch(f"/api/v1/webhooks/{webhook_id}", headers=bearer(),
                        json={"events": ["version.activated"], "enabled": False,
                              "url": receiver.url("/v2"), "description": "renamed"})
    assert changed.status_code == 200, changed.text
    assert {key: changed.json()[key] for key in ("events", "enabled", "url", "description")} == {
        "events": ["version.activated"], "enabled": False, "url": receiver.url("/v2"),
        "description": "renamed"}
    assert secret not in changed.text
    untouched = api.patch(f"/api/v1/webhooks/{webhook_id}", headers=bearer(), json={})
    assert untouched.json()["events"] == ["version.activated"]

    assert api.delete(f"/api/v1/webhooks/{webhook_id}", headers=bearer()).status_code == 204
    assert api.get(f"/api/v1/webhooks/{webhook_id}", headers=bearer()).status_code == 404
    assert api.get("/api/v1/webhooks", headers=bearer()).json()["total"] == 0


def test_the_list_is_paginated_and_never_shows_a_secret(api: TestClient,
                                                        receiver: Receiver) -> None:
    made = [register(api, receiver.url(f"/{index}")) for index in range(3)]
    first = api.get("/api/v1/webhooks?per_page=2", headers=bearer()).json()
    second = api.get("/api/v1/webhooks?per_page=2&page=2", headers=bearer()).json()
    assert first["total"] == second["total"] == 3
    assert len(first["items"]) == 2 and len(second["items"]) == 1
    listed = {item["id"] for item in first["items"] + second["items"]}
    assert listed == {webhook["id"] for webhook in made}
    text = json.dumps([first, second])
    assert "secret" not in text and not any(webhook["secret"] in text for webhook in made)
    assert api.get("/api/v1/webhooks?per_page=0", headers=bearer()).status_code == 422


def test_events_must_be_known_and_a_model_the_callers_own(api: TestClient,
                                                          receiver: Receiver) -> None:
    unknown = api.post("/api/v1/webhooks", headers=bearer(),
                       json={"url": receiver.url(), "events": ["training.succeeded", "nope"]})
    assert unknown.status_code == 422
    assert unknown.json()["error"]["code"] == "unknown_event"
    assert "nope" in unknown.json()["error"]["message"]
    assert unknown.json()["error"]["details"]["valid_events"] == list(EVENTS)
    empty = api.post("/api/v1/webhooks", headers=bearer(),
                     json={"url": receiver.url(), "events": []})
    assert empty.status_code == 422 and empty.json()["error"]["code"] == "no_events"

    missing = api.post("/api/v1/webhooks", headers=bearer(),
                       json={"url": receiver.url(), "events": ["training.failed"],
                             "model_id": "0" * 32})
    assert missing.status_code == 404 and missing.json()["error"]["code"] == "model_not_found"
    model_id = create_model(api)
    assert register(api, receiver.url(), model_id=model_id)["model_id"] == model_id

    webhook_id = register(api, receiver.url())["id"]
    patched = api.patch(f"/api/v1/webhooks/{webhook_id}", headers=bearer(),
                        json={"events": ["webhook.test"]})
    assert patched.status_code == 422 and patched.json()["error"]["code"] == "unknown_event"
    assert api.get("/api/v1/webhooks", headers=bearer()).json()["total"] == 2


def test_another_accounts_webhooks_are_404_everywhere(api: TestClient,
                                                      receiver: Receiver) -> None:
    runtime = api.app.state.runtime  # type: ignore[attr-defined]
    with runtime.session_factory() as session:
        create_account(session, name="other", key=OTHER_KEY)
    model_id = create_model(api)
    webhook = register(api, receiver.url(), model_id=model_id)
    other = bearer(OTHER_KEY)
    path = f"/api/v1/webhooks/{webhook['id']}"
    responses = [
        api.get(path, headers=other),
        api.patch(path, headers=other, json={"enabled": False}),
        api.post(f"{path}/test", headers=other),
        api.get(f"{path}/deliveries", headers=other),
        api.delete(path, headers=other),
        api.post("/api/v1/webhooks", headers=other,
                 json={"url": receiver.url(), "events": ["training.failed"],
                       "model_id": model_id}),
    ]
    for response in responses:
        assert response.status_code == 404, response.text
        assert receiver.url() not in response.text
    assert api.get("/api/v1/webhooks", headers=other).json() == {
        "items": [], "total": 0, "page": 1, "per_page": 50}
    assert api.get(path, headers=bearer()).json()["enabled"] is True
    assert receiver.requests == []


def test_the_test_event_arrives_signed_per_standard_webhooks(api: TestClient,
                                                             receiver: Receiver) -> None:
    webhook = register(api, receiver.url())
    queued = send_test(api, webhook["id"])
    delivery = wait_for_delivery(api, webhook["id"], queued["delivery_id"])
    assert delivery["status"] == "succeeded" and delivery["event"] == "webhook.test"
    [attempt] = delivery["attempts"]
    assert attempt["status_code"] == 200 and attempt["error"] is None

    [request] = receiver.requests
    assert request.path == "/hook"
    assert request.headers["webhook-id"] == queued["delivery_id"]
    assert request.headers["webhook-id"].startswith("msg_")
    assert abs(int(request.headers["webhook-timestamp"]) - time.time()) < 120
    assert request.headers["content-type"] == "application/json"
    assert request.headers["user-agent"] == "NanoNet-Webhooks/1"
    assert verifies(webhook["secret"], request)
    tampered = Received(at=request.at, path=request.path, headers=request.headers,
                        body=request.body.replace(b"test", b"tost"))
    assert not verifies(webhook["secret"], tampered)
    assert webhook["secret"].encode() not in request.body
    assert webhook["secret"] not in json.dumps(request.headers)

    body = json.loads(request.body)
    assert body["type"] == "webhook.test"
    assert body["data"]["webhook_id"] == webhook["id"]
    assert datetime.fromisoformat(body["timestamp"].replace("Z", "+00:00")).tzinfo is not None
    assert wait_for_job(api, queued["job_id"])["status"] == "succeeded"


def test_a_failing_receiver_is_retried_on_schedule_then_the_delivery_fails(
        api: TestClient, receiver: Receiver) -> None:
    receiver.default = 500
    webhook = register(api, receiver.url())
    queued = send_test(api, webhook["id"])
    delivery = wait_for_delivery(api, webhook["id"], queued["delivery_id"])

    assert delivery["status"] == "failed" and delivery["next_attempt_at"] is None
    assert len(delivery["attempts"]) == 1 + len(FAST_RETRIES)
    for attempt in delivery["attempts"]:
        assert attempt["status_code"] == 500
        assert "HTTP 500" in attempt["error"] and "receiver says no" in attempt["error"]
    requests = receiver.wait_for(3)
    time.sleep(0.6)  # a fourth attempt would be due by now
    assert len(receiver.requests) == 3
    assert {request.headers["webhook-id"] for request in requests} == {queued["delivery_id"]}
    assert {request.body for request in requests} == {requests[0].body}
    assert all(verifies(webhook["secret"], request) for request in requests)
    gaps = [later.at - earlier.at for earlier, later in zip(requests, requests[1:], strict=False)]
    # Rough: each retry waited for (at least about) its delay, none went out at once.
    assert gaps[0] > 0.15 and gaps[1] > 0.3, gaps
    job = wait_for_job(api, queued["job_id"])
    assert job["status"] == "failed" and "HTTP 500" in job["error"]


def test_a_retry_that_gets_through_succeeds(api: TestClient, receiver: Receiver) -> None:
    receiver.plan = [503]
    webhook = register(api, receiver.url())
    queued = send_test(api, webhook["id"])
    delivery = wait_for_delivery(api, webhook["id"], queued["delivery_id"])
    assert delivery["status"] == "succeeded"
    assert [attempt["status_code"] for attempt in delivery["attempts"]] == [503, 200]
    assert wait_for_job(api, queued["job_id"])["status"] == "succeeded"


def test_a_redirect_is_a_failed_attempt_and_never_followed(api: TestClient,
                                                           receiver: Receiver) -> None:
    receiver.default = 302
    receiver.location = receiver.url("/elsewhere")
    webhook = register(api, receiver.url())
    queued = send_test(api, webhook["id"])
    delivery = wait_for_delivery(api, webhook["id"], queued["delivery_id"])
    assert delivery["status"] == "failed"
    assert [attempt["status_code"] for attempt in delivery["attempts"]] == [302, 302, 302]
    assert "redirects are not followed" in delivery["attempts"][0]["error"]
    assert [request.path for request in receiver.requests] == ["/hook"] * 3


def test_a_hanging_receiver_costs_one_timeout_per_attempt(tmp_path: Path,
                                                          receiver: Receiver) -> None:
    receiver.default = "hang"
    with running_api(tmp_path / "data", webhook_timeout=0.5, webhook_retry_delays=[]) as api:
        webhook = register(api, receiver.url())
        queued = send_test(api, webhook["id"])
        delivery = wait_for_delivery(api, webhook["id"], queued["delivery_id"])
        [attempt] = delivery["attempts"]
        assert delivery["status"] == "failed" and attempt["status_code"] is None
        assert attempt["error"] == "no answer within 0.5 s"


@pytest.mark.parametrize("url", ["http://127.0.0.1:9/hook", "http://localhost/hook",
                                 "http://[::1]/hook", "http://169.254.169.254/latest/meta-data/"])
def test_a_private_url_is_refused_at_registration(client: TestClient, url: str) -> None:
    response = client.post("/api/v1/webhooks", headers=bearer(),
                           json={"url": url, "events": ["training.failed"]})
    assert response.status_code == 422
    error = response.json()["error"]
    assert error["code"] == "url_not_allowed"
    assert "NANONET_URL_ALLOW_PRIVATE" in error["message"]
    assert client.get("/api/v1/webhooks", headers=bearer()).json()["total"] == 0


def test_a_changed_url_is_checked_again(client: TestClient) -> None:
    # A public address literal: registration resolves it without DNS and sends nothing.
    webhook = register(client, "https://93.184.215.14/hook")
    for url, code in [("http://10.0.0.1/hook", "url_not_allowed"),
                      ("ftp://93.184.215.14/hook", "url_not_allowed"),
                      ("https://me:pw@93.184.215.14/hook", "url_not_allowed")]:
        response = client.patch(f"/api/v1/webhooks/{webhook['id']}", headers=bearer(),
                                json={"url": url})
        assert response.status_code == 422 and response.json()["error"]["code"] == code
    read = client.get(f"/api/v1/webhooks/{webhook['id']}", headers=bearer()).json()
    assert read["url"] == "https://93.184.215.14/hook"


def test_a_private_url_is_refused_at_delivery_once_the_setting_is_off(
        tmp_path: Path, receiver: Receiver) -> None:
    with running_api(tmp_path / "data", url_allow_private=True) as api:
        webhook = register(api, receiver.url())
    with running_api(tmp_path / "data", url_allow_private=False) as api:
        queued = send_test(api, webhook["id"])
        delivery = wait_for_delivery(api, webhook["id"], queued["delivery_id"])
        assert delivery["status"] == "failed"
        [attempt] = delivery["attempts"]  # a refusal is not retried
        assert attempt["status_code"] is None
        assert attempt["error"].startswith("not sent:")
        assert "loopback" in attempt["error"] and "NANONET_URL_ALLOW_PRIVATE" in attempt["error"]
        assert wait_for_job(api, queued["job_id"])["status"] == "failed"
    assert receiver.requests == []


def test_a_disabled_endpoint_drops_its_delivery_at_the_next_attempt(
        tmp_path: Path, receiver: Receiver) -> None:
    receiver.default = 500
    with running_api(tmp_path / "data", webhook_retry_delays=[1.0, 1.0]) as api:
        webhook = register(api, receiver.url())
        queued = send_test(api, webhook["id"])
        wait_for_delivery(api, webhook["id"], queued["delivery_id"],
                          until=lambda d: len(d["attempts"]) == 1)
        api.patch(f"/api/v1/webhooks/{webhook['id']}", headers=bearer(),
                  json={"enabled": False})
        delivery = wait_for_delivery(api, webhook["id"], queued["delivery_id"])
        assert delivery["status"] == "failed"
        assert [attempt["status_code"] for attempt in delivery["attempts"]] == [500, None]
        assert delivery["attempts"][1]["error"] == "not sent: the webhook is disabled"
        assert len(receiver.requests) == 1
        refused = api.post(f"/api/v1/webhooks/{webhook['id']}/test", headers=bearer())
        assert refused.status_code == 409
        assert refused.json()["error"]["code"] == "webhook_disabled"


def test_a_deleted_endpoint_drops_its_delivery_at_the_next_attempt(
        tmp_path: Path, receiver: Receiver) -> None:
    receiver.default = 500
    with running_api(tmp_path / "data", webhook_retry_delays=[1.0]) as api:
        webhook = register(api, receiver.url())
        queued = send_test(api, webhook["id"])
        wait_for_delivery(api, webhook["id"], queued["delivery_id"],
                          until=lambda d: len(d["attempts"]) == 1)
        assert api.delete(f"/api/v1/webhooks/{webhook['id']}", headers=bearer()).status_code == 204
        job = wait_for_job(api, queued["job_id"])
        assert job["status"] == "succeeded" and job["result"]["status"] == "dropped"
        assert len(receiver.requests) == 1


def test_a_restart_resumes_a_waiting_retry_at_its_time_not_before(
        tmp_path: Path, receiver: Receiver) -> None:
    receiver.plan = [500]
    with running_api(tmp_path / "data", webhook_retry_delays=[2.0]) as api:
        webhook = register(api, receiver.url())
        queued = send_test(api, webhook["id"])
        wait_for_delivery(api, webhook["id"], queued["delivery_id"],
                          until=lambda d: len(d["attempts"]) == 1)
    # The process stopped with the retry waiting; the next one finds the job queued at start.
    with running_api(tmp_path / "data", webhook_retry_delays=[2.0]) as api:
        delivery = wait_for_delivery(api, webhook["id"], queued["delivery_id"])
        assert delivery["status"] == "succeeded" and len(delivery["attempts"]) == 2
    first, second = receiver.wait_for(2)
    assert second.at - first.at > 1.8
    assert second.headers["webhook-id"] == first.headers["webhook-id"]


def test_emit_queues_one_delivery_per_endpoint_that_wants_the_event(
        api: TestClient, receiver: Receiver) -> None:
    runtime = api.app.state.runtime  # type: ignore[attr-defined]
    with runtime.session_factory() as session:
        create_account(session, name="other", key=OTHER_KEY)
        account_id = authenticate(session, key=API_KEY).id  # type: ignore[union-attr]
    mine, also_mine = create_model(api), create_model(api, name="other model")
    register(api, receiver.url("/all-models"))
    register(api, receiver.url("/this-model"), model_id=mine)
    register(api, receiver.url("/another-model"), model_id=also_mine)
    register(api, receiver.url("/other-event"), events=("training.failed",))
    disabled = register(api, receiver.url("/disabled"))
    api.patch(f"/api/v1/webhooks/{disabled['id']}", headers=bearer(), json={"enabled": False})
    register(api, receiver.url("/other-account"), key=OTHER_KEY)

    data = {"model_id": mine, "version": {"number": 3, "accuracy": 0.97}}
    with runtime.session_factory() as session:
        queued = emit(session, runtime, account_id=account_id, model_id=mine,
                      event="training.succeeded", data=data)
    assert len(queued) == 2
    requests = receiver.wait_for(2)
    time.sleep(0.3)
    assert sorted(request.path for request in receiver.requests) == ["/all-models",
                                                                     "/this-model"]
    assert {request.headers["webhook-id"] for request in requests} == set(queued)
    for request in requests:
        body = json.loads(request.body)
        assert body["type"] == "training.succeeded" and body["data"] == data


def test_emit_never_raises(api: TestClient, receiver: Receiver) -> None:
    runtime = api.app.state.runtime  # type: ignore[attr-defined]
    register(api, receiver.url(), events=("training.failed",))
    with runtime.session_factory() as session:
        account_id = authenticate(session, key=API_KEY).id  # type: ignore[union-attr]
        session.connection().exec_driver_sql("DROP TABLE webhook_delivery")
        session.commit()
    with runtime.session_factory() as session:
        assert emit(session, runtime, account_id=account_id, model_id=None,
                    event="training.failed", data={}) == []
    assert receiver.requests == []


def test_hanging_receivers_do_not_hold_up_another_endpoints_delivery(tmp_path: Path) -> None:
    """Each attempt waits up to the timeout on its receiver: a few that hang must leave delivery
    threads for everyone else (NANONET_WEBHOOK_WORKERS)."""
    with (Receiver(default="hang") as hanging, Receiver() as answering,
          running_api(tmp_path / "data", webhook_timeout=60, webhook_retry_delays=[]) as api):
        stuck = [register(api, hanging.url(f"/stuck-{n}")) for n in range(3)]
        for webhook in stuck:
            send_test(api, webhook["id"])
        hanging.wait_for(3)  # three delivery threads now wait on it
        healthy = register(api, answering.url())
        queued = send_test(api, healthy["id"])
        delivery = wait_for_delivery(api, healthy["id"], queued["delivery_id"], timeout=15)
        assert delivery["status"] == "succeeded"
        assert all(d["status"] == "pending" for w in stuck for d in deliveries(api, w["id"]))
        hanging.released.set()
