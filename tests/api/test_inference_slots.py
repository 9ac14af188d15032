"""A fixed number of inference slots: a predict past them waits, then gets 503 busy; no DB
connection is held while the backbone runs, and /health still answers."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from fastapi.testclient import TestClient

from app.main import create_app
from app.services import predictions
from tests.conftest import bearer, create_model, files_of, make_settings, tree_photos


@pytest.fixture
def one_slot(tmp_path: Path) -> Iterator[TestClient]:
    settings = make_settings(tmp_path / "data", inference_slots=1, inference_wait_seconds=0.2)
    with TestClient(create_app(settings)) as test_client:
        yield test_client


class SlowBackbone:
    """Stands in for the backbone pass: holds its slot until released."""

    def __init__(self) -> None:
        self.running = threading.Event()
        self.release = threading.Event()
        self.calls = 0

    def __call__(self, _runtime: Any, _head: Any, _meta: Any, images: list[Any],
                 **_: Any) -> list[dict[str, Any]]:
        self.calls += 1
        self.running.set()
        assert self.release.wait(30)
        return [{"label": "hemlock", "probability": 1.0,
                 "predictions": [{"label": "hemlock", "probability": 1.0}]} for _ in images]


def test_a_predict_past_the_slots_gets_503_busy(one_slot: TestClient,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    model_id = create_model(one_slot)
    backbone = SlowBackbone()
    # A trained version adds nothing here but minutes: the slot wraps whatever labels the images.
    monkeypatch.setattr(predictions, "serving_version", lambda *_, **__: SimpleNamespace(number=1))
    monkeypatch.setattr(predictions, "usable_head", lambda *_, **__: (None, {}))
    monkeypatch.setattr(predictions, "label_with", backbone)
    engine = one_slot.app.state.runtime.engine  # type: ignore[attr-defined]

    def predict() -> Any:
        return one_slot.post(f"/api/v1/models/{model_id}/predict", headers=bearer(),
                             files=files_of(*tree_photos("hemlock")[:1]))

    with ThreadPoolExecutor(2) as pool:
        first = pool.submit(predict)
        assert backbone.running.wait(30)
        try:
            assert engine.pool.checkedout() == 0  # the first holds a slot, not a connection
            health = one_slot.get("/health")
            assert health.status_code == 200 and health.json()["status"] == "ok"
            second = predict()
            assert second.status_code == 503
            assert second.json()["error"]["code"] == "busy"
            assert int(second.headers["retry-after"]) >= 1
            assert "NANONET_INFERENCE_SLOTS" in second.json()["error"]["message"]
        finally:
            backbone.release.set()
        answered = first.result(30)
    assert answered.status_code == 200, answered.text
    assert answered.json()["results"][0]["label"] == "hemlock"
    assert backbone.calls == 1  # the refused one never reached the backbone
    assert predict().status_code == 200  # the slot came back
