"""One request's decode work is bounded in all, not just per file; high bit depths convert
without whole-image float copies."""

from __future__ import annotations

import io
import tracemalloc
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image

from app.main import create_app
from app.ml.imaging import decode_image
from tests.conftest import bearer, create_model, make_settings

MiB = 1024 * 1024


def png(value: int, side: int = 1000, mode: str = "L") -> bytes:
    buffer = io.BytesIO()
    Image.new(mode, (side, side), value).save(buffer, format="PNG")
    return buffer.getvalue()


def truncated_png(side: int = 1000) -> bytes:
    """A PNG whose header is whole (side x side) but whose pixel data is cut: decoding it fails."""
    noise = np.random.default_rng(0).integers(0, 256, (side, side), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(noise, mode="L").save(buffer, format="PNG")
    data = buffer.getvalue()
    return data[: len(data) // 3]


@pytest.fixture
def budgeted(tmp_path: Path) -> Iterator[TestClient]:
    """Three megapixels per request."""
    settings = make_settings(tmp_path / "data", extract_on_upload=False,
                             max_request_pixels=3_000_000)
    with TestClient(create_app(settings)) as client:
        yield client


def post(client: TestClient, model_id: str, files: list[tuple[str, bytes]]):  # type: ignore[no-untyped-def]
    return client.post(f"/api/v1/models/{model_id}/images", data={"category": "hemlock"},
                       files=[("files", (name, data, "image/png")) for name, data in files],
                       headers=bearer())


def test_files_past_the_requests_pixel_budget_are_refused_one_by_one(
        budgeted: TestClient) -> None:
    model_id = create_model(budgeted)
    files = [(f"gray{value}.png", png(value)) for value in range(1, 6)]  # 1 MP each
    response = post(budgeted, model_id, files)
    assert response.status_code == 200, response.text
    results = response.json()["results"]
    assert [r["status"] for r in results] == ["accepted"] * 3 + ["rejected"] * 2
    for refused in results[3:]:
        assert refused["error"]["code"] == "pixel_budget_exceeded"
        assert refused["error"]["http_status"] == 413
        assert "3 megapixels" in refused["error"]["message"]
    images = budgeted.get(f"/api/v1/models/{model_id}/images", headers=bearer()).json()
    assert images["total"] == 3
    again = post(budgeted, model_id, files[3:])  # the budget is per request
    assert [r["status"] for r in again.json()["results"]] == ["accepted", "accepted"]


def test_the_budget_is_checked_from_the_header_before_decoding(budgeted: TestClient) -> None:
    model_id = create_model(budgeted)
    alone = post(budgeted, model_id, [("cut.png", truncated_png())])
    assert alone.status_code == 422 and alone.json()["error"]["code"] == "corrupt_image"
    spent = [(f"gray{value}.png", png(value)) for value in range(1, 4)]
    response = post(budgeted, model_id, [*spent, ("cut.png", truncated_png())])
    cut = response.json()["results"][3]
    assert cut["error"]["code"] == "pixel_budget_exceeded"  # refused unread: not corrupt_image


def test_a_request_whose_every_file_is_over_budget_is_413(budgeted: TestClient) -> None:
    model_id = create_model(budgeted)
    response = post(budgeted, model_id, [("huge.png", png(7, side=2000, mode="1"))])  # 4 MP
    assert response.status_code == 413
    assert response.json()["error"]["code"] == "pixel_budget_exceeded"


def tiff(pixels: np.ndarray, mode: str) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(pixels, mode=mode).save(buffer, format="TIFF")
    return buffer.getvalue()


def decode_peak(data: bytes) -> tuple[np.ndarray, int]:
    """Decode `data`; return the gray result and the peak of memory numpy and Python took."""
    tracemalloc.start()
    try:
        decoded = decode_image(data, max_bytes=64 * MiB, max_side=4000)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    return np.asarray(decoded.image)[:, :, 0], peak


def test_32_bit_gray_converts_without_whole_image_float_copies() -> None:
    height, width = 2000, 3000
    ramp = np.tile(np.linspace(0, 65535, width).astype(np.int32), (height, 1))  # 24 MB
    gray, peak = decode_peak(tiff(ramp, "I"))
    np.testing.assert_array_equal(gray, (ramp >> 8).astype(np.uint8))
    # A float64 copy of the whole image alone would be 48 MB (converting through them peaked
    # at 160 MB); tiles of 512 x 512 keep it near the 6 MB of 8-bit output.
    assert peak < 16 * MiB, peak / MiB


def test_a_wide_range_is_stretched_the_same_a_tile_at_a_time() -> None:
    height, width = 1500, 2500  # several tiles, and tiles of unequal ranges
    pixels = np.zeros((height, width), dtype=np.int32)
    pixels[:, :1000] = -100_000
    pixels[:, 2000:] = 100_000
    gray, peak = decode_peak(tiff(pixels, "I"))
    assert gray[0, 0] == 0 and gray[0, 1500] == 128 and gray[-1, -1] == 255
    assert peak < 16 * MiB, peak / MiB


def test_16_bit_gray_keeps_its_top_byte() -> None:
    ramp = np.tile(np.arange(0, 64000, 16, dtype=np.uint16), (300, 1))  # 4000 wide
    buffer = io.BytesIO()
    Image.fromarray(ramp).save(buffer, format="PNG")  # mode I;16
    gray, peak = decode_peak(buffer.getvalue())
    np.testing.assert_array_equal(gray, (ramp >> 8).astype(np.uint8))
    assert peak < 4 * MiB, peak / MiB  # the whole-image shift took 6 MB for 1.2 MP
