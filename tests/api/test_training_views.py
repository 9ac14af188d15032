"""Training decides its augmented views by the smallest category (augment.augmented_views)."""

from __future__ import annotations

import io

import numpy as np
from fastapi.testclient import TestClient
from PIL import Image

from app.main import create_app
from app.ml.augment import AUGMENT_BELOW, DEFAULT_VIEWS
from tests.conftest import bearer, create_model, make_settings, wait_for_job


def photo(seed: int, hue: int) -> tuple[str, tuple[str, bytes, str]]:
    rng = np.random.default_rng(seed)
    pixels = rng.integers(0, 60, size=(48, 48, 3), dtype=np.uint8)
    pixels[..., hue] += 150
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    return ("files", (f"{seed}.png", buffer.getvalue(), "image/png"))


def train_views(client: TestClient, per_class: list[int]) -> tuple[int, dict]:
    model_id = create_model(client, categories=("red", "green"))
    for hue, (name, count) in enumerate(zip(("red", "green"), per_class, strict=True)):
        files = [photo(1000 * hue + i, hue) for i in range(count)]
        response = client.post(f"/api/v1/models/{model_id}/images", data={"category": name},
                               files=files, headers=bearer())
        assert response.status_code == 200, response.text
    job_id = client.post(f"/api/v1/models/{model_id}/train", headers=bearer()).json()["job_id"]
    assert wait_for_job(client, job_id)["status"] == "succeeded"
    metrics = client.get(f"/api/v1/models/{model_id}/metrics", headers=bearer()).json()
    return metrics["views"], metrics


def test_small_categories_get_augmented_views_and_large_ones_do_not(tmp_path):
    settings = make_settings(tmp_path, augment_views=None)
    with TestClient(create_app(settings)) as client:
        views, _ = train_views(client, [6, AUGMENT_BELOW + 5])  # the smallest one decides
        assert views == 1 + DEFAULT_VIEWS
        views, metrics = train_views(client, [AUGMENT_BELOW, AUGMENT_BELOW + 2])
        assert views == 1
        assert metrics["n_images"] == 2 * AUGMENT_BELOW + 2
