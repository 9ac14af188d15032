"""Webhooks fired by real work: each training, each activation, a failed training; and a
receiver that hangs or is dead never holds a training up (its delivery runs apart, after the
commit). The endpoint and delivery mechanics are in test_webhooks.py."""

from __future__ import annotations

import json
import socket
import time
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from app.services.webhooks import EVENTS
from tests.api.test_webhooks import deliveries, register, running_api, verifies, wait_for_delivery
from tests.conftest import bearer, create_model, tree_photos, upload, wait_for_job
from tests.http_receiver import Receiver

pytestmark = pytest.mark.slow


def trainable_model(api: TestClient, per_class: int = 6) -> str:
    model_id = create_model(api)
    for label in ("hemlock", "japanese_cherry"):
        assert upload(api, model_id, label, tree_photos(label)[:per_class]).status_code == 200
    return model_id


def train(api: TestClient, model_id: str, expect: str = "succeeded") -> dict[str, Any]:
    response = api.post(f"/api/v1/models/{model_id}/train", headers=bearer())
    assert response.status_code == 202, response.text
    job = wait_for_job(api, response.json()["job_id"], timeout=300)
    assert job["status"] == expect, job
    return job


def bodies(receiver: Receiver, event: str) -> list[dict[str, Any]]:
    return [json.loads(request.body) for request in receiver.requests
            if json.loads(request.body)["type"] == event]


def settled(api: TestClient, webhook_id: str, count: int) -> list[dict[str, Any]]:
    """Wait until the endpoint has `count` deliveries, none pending; return them, oldest first."""
    wait_for_delivery_count(api, webhook_id, count)
    items = deliveries(api, webhook_id)
    return [wait_for_delivery(api, webhook_id, item["id"]) for item in reversed(items)]


def wait_for_delivery_count(api: TestClient, webhook_id: str, count: int,
                            timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while len(deliveries(api, webhook_id)) < count:
        assert time.monotonic() < deadline, deliveries(api, webhook_id)
        time.sleep(0.05)


def test_each_training_sends_one_signed_training_succeeded(tmp_path: Path,
                                                            receiver: Receiver) -> None:
    with running_api(tmp_path / "data") as api:
        webhook = register(api, receiver.url(), events=EVENTS)
        model_id = trainable_model(api)
        train(api, model_id)
        train(api, model_id)
        rolled_back = api.post(f"/api/v1/models/{model_id}/versions/1/activate",
                               headers=bearer())
        assert rolled_back.status_code == 200, rolled_back.text

        # 2 trainings, each activating its version, then the rollback: 5 events.
        items = settled(api, webhook["id"], 5)
        assert all(item["status"] == "succeeded" for item in items), items
        receiver.wait_for(5)
        assert all(verifies(webhook["secret"], request) for request in receiver.requests)
        assert len({request.headers["webhook-id"] for request in receiver.requests}) == 5

        succeeded = bodies(receiver, "training.succeeded")
        assert [body["data"]["version"]["number"] for body in succeeded] == [1, 2]
        for body in succeeded:
            data = body["data"]
            assert data["model_id"] == model_id and data["activated"] is True
            assert data["version"]["status"] == "ready"
            assert data["version"]["backbone"] and data["version"]["head"]
            metrics = data["version"]["metrics"]
            assert 0 <= metrics["accuracy"] <= 1 and metrics["n_images"] == 12
        version_2 = api.get(f"/api/v1/models/{model_id}/versions/2", headers=bearer()).json()
        assert succeeded[1]["data"]["version"]["metrics"]["accuracy"] == (
            version_2["metrics"]["accuracy"])

        activated = bodies(receiver, "version.activated")
        assert [(body["data"]["version"]["number"], body["data"]["previous_version"])
                for body in activated] == [(1, None), (2, 1), (1, 2)]
        assert activated[-1]["data"]["reason"] == "activated by request"
        assert bodies(receiver, "training.failed") == []


def test_a_failed_training_sends_training_failed(tmp_path: Path, receiver: Receiver,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    def broken(*args: object, **kwargs: object) -> None:
        raise RuntimeError("the fit blew up")

    monkeypatch.setattr("app.ml.select.fit_model", broken)
    with running_api(tmp_path / "data") as api:
        webhook = register(api, receiver.url(), events=("training.failed", "training.succeeded"))
        model_id = trainable_model(api, per_class=3)
        job = train(api, model_id, expect="failed")
        [delivery] = settled(api, webhook["id"], 1)
        assert delivery["event"] == "training.failed" and delivery["status"] == "succeeded"
        [body] = bodies(receiver, "training.failed")
        assert body["data"]["model_id"] == model_id and body["data"]["job_id"] == job["id"]
        assert body["data"]["error"] == job["error"]
        assert "the fit blew up" not in job["error"] and "unexpected error" in job["error"]
        assert body["data"]["version"]["number"] == 1
        assert body["data"]["version"]["status"] == "failed"


def test_a_hanging_receiver_never_holds_up_a_training(tmp_path: Path,
                                                      receiver: Receiver) -> None:
    """The receiver holds the first delivery for as long as the test runs (the timeout is far
    longer): both trainings end meanwhile, the second one while the first delivery is still
    waiting for its answer."""
    receiver.default = "hang"
    with running_api(tmp_path / "data", webhook_timeout=60) as api:
        webhook = register(api, receiver.url(), events=("training.succeeded",))
        model_id = trainable_model(api, per_class=4)
        train(api, model_id)
        receiver.wait_for(1, timeout=30)  # the delivery is out, and hangs
        train(api, model_id)
        [first, *_] = reversed(deliveries(api, webhook["id"]))
        assert first["status"] == "pending" and first["attempts"] == [], first
        models = api.get(f"/api/v1/models/{model_id}", headers=bearer()).json()
        assert models["state"] == "ready" and models["version"]["number"] == 2
        receiver.released.set()  # let the hung delivery end before the app stops


def test_a_dead_receiver_never_fails_a_training(tmp_path: Path) -> None:
    with socket.socket() as sock:  # a port nothing listens on
        sock.bind(("127.0.0.1", 0))
        dead = f"http://127.0.0.1:{sock.getsockname()[1]}/hook"
    with running_api(tmp_path / "data", webhook_retry_delays=[0.1]) as api:
        webhook = register(api, dead, events=("training.succeeded",))
        model_id = trainable_model(api, per_class=3)
        train(api, model_id)
        [delivery] = settled(api, webhook["id"], 1)
        assert delivery["status"] == "failed"
        assert [attempt["error"] for attempt in delivery["attempts"]] == (
            ["connection refused"] * 2)
        assert api.get(f"/api/v1/models/{model_id}", headers=bearer()).json()["state"] == (
            "ready")
