"""Property: whatever bytes arrive, an upload answers accepted, duplicate or a 4xx with a known
code, never a 5xx, and the store stays whole: every row has its file, every file has a row."""

from __future__ import annotations

import io
from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image
from sqlalchemy import select

from app.db.tables import Image as ImageRow
from app.main import create_app
from app.runtime import Runtime
from tests.conftest import BAD_INPUTS, bearer, create_model, make_settings, tree_photos

FILE_CODES = {"empty_file": 400, "not_an_image": 415, "unsupported_format": 415,
              "corrupt_image": 422, "image_too_large": 413, "file_too_large": 413,
              "pixel_budget_exceeded": 413}
REQUEST_CODES = {*FILE_CODES, "no_acceptable_file"}
REAL = [path.read_bytes() for path in [*tree_photos("hemlock")[:3],
                                       *sorted(BAD_INPUTS.glob("*.*"))]
        if path.suffix not in (".md", ".py") and "bomb" not in path.name]
MAGIC = [b"", b"\x89PNG\r\n\x1a\n", b"\xff\xd8\xff\xe0", b"GIF89a", b"BM", b"II*\x00",
         b"RIFF\x00\x00\x00\x00WEBPVP8 "]


def encoded(width: int, height: int, mode: str, fmt: str, seed: int) -> bytes:
    image = Image.new(mode, (width, height), seed % 256 if mode in ("L", "1", "P") else
                      tuple((seed * k) % 256 for k in (1, 3, 7, 11)[:len(mode)]))
    buffer = io.BytesIO()
    image.save(buffer, format=fmt)
    return buffer.getvalue()


random_bytes = st.builds(lambda magic, tail: magic + tail, st.sampled_from(MAGIC),
                         st.binary(max_size=600))
truncated_real = st.sampled_from(REAL).flatmap(
    lambda data: st.integers(0, len(data)).map(lambda cut: data[:cut]))
real = st.sampled_from(REAL)
generated = st.builds(encoded, st.integers(1, 300), st.integers(1, 300),
                      st.sampled_from(["RGB", "L", "RGBA", "1"]),
                      st.sampled_from(["PNG", "BMP", "GIF", "TIFF"]), st.integers(0, 10_000))
files = st.lists(st.one_of(random_bytes, truncated_real, real, generated), min_size=1,
                 max_size=3)


@pytest.fixture(scope="module")
def intake(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[TestClient, str]]:
    data_dir = tmp_path_factory.mktemp("intake") / "data"
    with TestClient(create_app(make_settings(data_dir, extract_on_upload=False))) as client:
        yield client, create_model(client)


def store_is_whole(runtime: Runtime) -> None:
    with runtime.session_factory() as session:
        named = set(session.scalars(select(ImageRow.sha256)))
    on_disk = {digest for digest, _ in runtime.blobs.stored()}
    assert named == on_disk  # no row without its file, no file without its row
    assert not list(runtime.blobs.root.glob(".incoming-*"))  # no write left half done


@settings(max_examples=60, deadline=None, database=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(payloads=files, category=st.sampled_from(["hemlock", "japanese_cherry", None]))
def test_any_upload_is_answered_4xx_or_stored_whole(
        intake: tuple[TestClient, str], payloads: list[bytes], category: str | None) -> None:
    client, model_id = intake
    response = client.post(
        f"/api/v1/models/{model_id}/images",
        data={"category": category} if category else {},
        files=[("files", (f"f{i}.jpg", data, "image/jpeg")) for i, data in enumerate(payloads)],
        headers=bearer())
    assert response.status_code < 500, response.text
    body = response.json()
    if response.status_code >= 400:
        assert body["error"]["code"] in REQUEST_CODES, body
    else:
        assert len(body["results"]) == len(payloads)
        for result in body["results"]:
            if result["status"] == "rejected":
                assert FILE_CODES[result["error"]["code"]] == result["error"]["http_status"]
            else:
                assert result["status"] in ("accepted", "duplicate"), result
                listed = client.get(f"/api/v1/models/{model_id}/images/{result['image_id']}",
                                    headers=bearer())
                assert listed.status_code == 200 and listed.json()["sha256"] == result["sha256"]
    store_is_whole(client.app.state.runtime)  # type: ignore[attr-defined]


def test_the_strategies_reach_every_answer(tmp_path: Path) -> None:
    """The property above is only as good as its inputs: each kind of answer is reachable."""
    with TestClient(create_app(make_settings(tmp_path, extract_on_upload=False))) as client:
        model_id = create_model(client)
        samples = [REAL[0], REAL[0], REAL[0][:500], b"", b"plain text", b"\x89PNG\r\n\x1a\nxx"]
        response = client.post(f"/api/v1/models/{model_id}/images", data={"category": "hemlock"},
                               files=[("files", (f"f{i}", data, "image/jpeg"))
                                      for i, data in enumerate(samples)], headers=bearer())
        seen = {r["error"]["code"] if r["status"] == "rejected" else r["status"]
                for r in response.json()["results"]}
        assert {"accepted", "duplicate", "corrupt_image", "empty_file", "not_an_image"} <= seen
