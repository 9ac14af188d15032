from __future__ import annotations

from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from PIL import Image as PILImage
from sqlalchemy import select

from app.db.tables import Image, Job
from app.services.accounts import create_account
from tests.conftest import (
    DATASETS,
    OTHER_KEY,
    bearer,
    create_model,
    files_of,
    tree_photos,
    upload,
    wait_for_job,
)

pytestmark = pytest.mark.slow

LABELLED = 6  # per category
POOL = 5  # per category


def _pool_upload(client: TestClient, model_id: str, paths: list[Path]):  # type: ignore[no-untyped-def]
    return client.post(f"/api/v1/models/{model_id}/images", files=files_of(*paths),
                       headers=bearer())


def _suggestions(client: TestClient, model_id: str, query: str = "", key: str | None = None):  # type: ignore[no-untyped-def]
    return client.get(f"/api/v1/models/{model_id}/suggestions{query}",
                      headers=bearer(key) if key else bearer())


def _train(client: TestClient, model_id: str) -> None:
    job_id = client.post(f"/api/v1/models/{model_id}/train", headers=bearer()).json()["job_id"]
    job = wait_for_job(client, job_id)
    assert job["status"] == "succeeded", job


def _reencoded(path: Path, target: Path) -> Path:
    """The same photo as other bytes: JPEG quality 50, as a second upload from a phone might be."""
    with PILImage.open(path) as opened:
        opened.convert("RGB").save(target, "JPEG", quality=50)
    return target


def _margins(client: TestClient, model_id: str, paths: list[Path]) -> dict[str, float]:
    """Top minus second probability of each photo, as the predict endpoint reports them."""
    response = client.post(f"/api/v1/models/{model_id}/predict", files=files_of(*paths),
                           headers=bearer())
    assert response.status_code == 200, response.text
    out = {}
    for path, result in zip(paths, response.json()["results"], strict=True):
        first, second = result["predictions"][:2]
        out[path.name] = first["probability"] - second["probability"]
    return out


def _photos(label: str) -> list[Path]:
    return sorted((DATASETS / "hymenoptera" / "train" / label).glob("*.jpg"))


@pytest.fixture
def with_pool(client: TestClient, tmp_path: Path) -> tuple[str, list[Path], Path]:
    """A model of ants and bees trained on 6 photos of each; in its pool 5 other photos of each
    a blend of two labelled ones, and a re-encoded copy of the first. Returns (model id, the 11
    pool images, the copy).

    Hymenoptera rather than the trees: the trees are told apart at 100%, so every margin ties.
    """
    model_id = create_model(client, name="insects", categories=("ants", "bees"))
    pool: list[Path] = []
    for label in ("ants", "bees"):
        photos = _photos(label)
        assert upload(client, model_id, label, photos[:LABELLED]).status_code == 200
        pool += photos[LABELLED:LABELLED + POOL]
    _train(client, model_id)
    # Half an ant photo, half a bee photo, both labelled: the one image the model is torn over.
    ant, bee = _photos("ants")[0], _photos("bees")[0]
    with PILImage.open(ant) as a, PILImage.open(bee) as b:
        base = a.convert("RGB")
        PILImage.blend(base, b.convert("RGB").resize(base.size), 0.5).save(
            tmp_path / "blend.jpg", "JPEG", quality=95)
    pool.append(tmp_path / "blend.jpg")
    copy = _reencoded(pool[0], tmp_path / "copy_of_first.jpg")
    response = _pool_upload(client, model_id, [*pool, copy])
    assert response.status_code == 200, response.text
    assert response.json()["accepted"] == len(pool) + 1
    return model_id, pool, copy


def test_background_extraction_covers_the_pool(client: TestClient,
                                               with_pool: tuple[str, list[Path], Path]) -> None:
    model_id, pool, _ = with_pool
    runtime = client.app.state.runtime  # type: ignore[attr-defined]
    with runtime.session_factory() as session:
        job_id = session.scalars(select(Job.id).where(Job.model_id == model_id,
                                                      Job.kind == "extract")
                                 .order_by(Job.created_at.desc())).first()
        digests = list(session.scalars(select(Image.sha256).where(Image.model_id == model_id)))
    assert job_id is not None  # the pool upload asked for one
    job = wait_for_job(client, job_id)
    assert job["status"] == "succeeded", job
    assert job["result"] == {"images": 2 * LABELLED + len(pool) + 1}
    for digest in digests:
        for backbone in runtime.settings.candidate_backbones:
            assert runtime.features.get(digest, backbone) is not None, (digest, backbone)


def test_least_certain_first_and_a_copy_only_once(client: TestClient,
                                                  with_pool: tuple[str, list[Path], Path]) -> None:
    model_id, pool, copy = with_pool
    response = _suggestions(client, model_id, "?limit=100")
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["model_id"] == model_id and body["version"] == 1
    assert body["pool_size"] == len(pool) + 1
    items = body["items"]
    names = [item["file_name"] for item in items]
    # The photo and its copy are one picture: whichever is less certain stands for both.
    assert len(items) == len(pool)
    assert len({pool[0].name, copy.name} & set(names)) == 1
    assert set(names) - {pool[0].name, copy.name} == {p.name for p in pool[1:]}

    margins = _margins(client, model_id, [*pool, copy])
    assert names == sorted(names, key=lambda name: margins[name])
    # An order that means something: the margins differ, the blend is the least certain.
    assert len({margins[name] for name in names}) >= 6
    assert names[0] == "blend.jpg" and items[0]["margin"] < 0.9
    assert items[0]["reason"].startswith("The model is torn between ")
    kept = pool[0].name if pool[0].name in names else copy.name
    dropped = copy.name if kept == pool[0].name else pool[0].name
    assert margins[kept] <= margins[dropped]
    for item in items:
        assert item["margin"] == pytest.approx(margins[item["file_name"]], abs=1e-3)
        assert item["predicted"] in ("ants", "bees")
        assert 0.5 <= item["probability"] <= 1
        assert item["predicted"] in item["reason"] and item["reason"].endswith(".")
        assert f"{round(100 * item['probability'])}%" in item["reason"]

    runtime = client.app.state.runtime  # type: ignore[attr-defined]
    with runtime.session_factory() as session:
        ids = {image.filename: image for image in session.scalars(
            select(Image).where(Image.model_id == model_id))}
    first = items[0]
    assert first["image_id"] == ids[first["file_name"]].id
    thumbnail = client.get(first["thumbnail_url"], headers=bearer())
    assert thumbnail.status_code == 200 and thumbnail.headers["content-type"] == "image/jpeg"
    assert first["thumbnail_url"] == client.get(
        f"/api/v1/models/{model_id}/images/{first['image_id']}",
        headers=bearer()).json()["thumbnail_url"]

    two = _suggestions(client, model_id, "?limit=2").json()
    assert two["items"] == items[:2] and two["pool_size"] == len(pool) + 1
    assert [item["file_name"] for item in _suggestions(client, model_id).json()["items"]] == names
    for bad in ("?limit=0", "?limit=101"):
        assert _suggestions(client, model_id, bad).status_code == 422

    # Labelling the first suggestion takes it out of the pool and out of the list.
    labelled = client.patch(f"/api/v1/models/{model_id}/images/{first['image_id']}",
                            json={"category": first["predicted"]}, headers=bearer())
    assert labelled.status_code == 200, labelled.text
    after = _suggestions(client, model_id, "?limit=100").json()
    assert after["pool_size"] == len(pool)
    # Its twin, if it was one of the pair, is no longer a copy of anything suggested.
    remaining = names[1:] + ([dropped] if first["file_name"] == kept else [])
    assert [item["file_name"] for item in after["items"]] == sorted(
        remaining, key=lambda name: margins[name])


def test_empty_pool_gives_an_empty_list(client: TestClient, trained_trees: str) -> None:
    response = _suggestions(client, trained_trees)
    assert response.status_code == 200, response.text
    assert response.json() == {"model_id": trained_trees, "version": 1, "pool_size": 0,
                               "items": []}


def test_untrained_model_is_409(client: TestClient) -> None:
    model_id = create_model(client)
    assert _pool_upload(client, model_id, tree_photos("hemlock")[:2]).status_code == 200
    response = _suggestions(client, model_id)
    assert response.status_code == 409, response.text
    assert response.json()["error"]["code"] == "model_not_trained"


def test_another_account_gets_404(client: TestClient,
                                  with_pool: tuple[str, list[Path], Path]) -> None:
    model_id, _, _ = with_pool
    runtime = client.app.state.runtime  # type: ignore[attr-defined]
    with runtime.session_factory() as session:
        create_account(session, name="other", key=OTHER_KEY)
    assert _suggestions(client, model_id).status_code == 200
    response = _suggestions(client, model_id, key=OTHER_KEY)
    assert response.status_code == 404, response.text
    assert response.json()["error"]["code"] == "model_not_found"
    assert "ants" not in response.text and "bees" not in response.text


