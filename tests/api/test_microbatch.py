"""Concurrent /predict requests share backbone calls (micro-batching) and answer exactly what
the same requests answer one at a time."""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from app.config import Settings
from app.ml.batching import BatchingRunner
from tests.conftest import TREES, bearer, files_of, make_settings, tree_photos

pytestmark = pytest.mark.slow


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    # A wide window, so requests sent together surely meet in one call even on a busy machine.
    return make_settings(tmp_path / "data", microbatch_window_ms=80, microbatch_max_size=32,
                         inference_slots=8)


def test_concurrent_predicts_are_merged_and_answer_as_sequential_ones(
        client: TestClient, trained_trees: str) -> None:
    photos = [*tree_photos("hemlock")[:4], *tree_photos("japanese_cherry")[:3],
              TREES / "test" / "hemlock" / "test_image.jpg"]

    def predict(photo: Path) -> dict[str, Any]:
        response = client.post(f"/api/v1/models/{trained_trees}/predict", headers=bearer(),
                               files=files_of(photo))
        assert response.status_code == 200, response.text
        return response.json()

    runner = client.app.state.runtime.runner  # type: ignore[attr-defined]
    assert isinstance(runner, BatchingRunner)
    alone = [predict(photo) for photo in photos]
    calls_before = runner.calls
    start = threading.Barrier(len(photos))

    def together(photo: Path) -> dict[str, Any]:
        start.wait()
        return predict(photo)

    with ThreadPoolExecutor(len(photos)) as pool:
        concurrent = list(pool.map(together, photos))
    assert concurrent == alone  # labels and every probability, per request
    assert runner.calls - calls_before < len(photos)  # some requests shared a backbone call
