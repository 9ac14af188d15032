"""Batch predictions: files or pool images labelled by a job, exactly as /predict labels them."""

from __future__ import annotations

import csv
import io
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from app.jobs.handlers import run_job
from app.main import create_app
from app.runtime import Runtime
from app.services import jobs as job_service
from app.services import webhooks
from app.services.accounts import create_account
from tests.conftest import (
    BAD_INPUTS,
    DATASETS,
    OTHER_KEY,
    bearer,
    create_model,
    files_of,
    make_settings,
    upload,
    wait_for_job,
)

pytestmark = pytest.mark.slow

HYMENOPTERA = DATASETS / "hymenoptera"
VAL = sorted((HYMENOPTERA / "val").glob("*/*.jpg"))
REFUSED = {"truncated.jpg": "corrupt_image", "empty.jpg": "empty_file",
           "not_an_image.jpg": "not_an_image", "bomb_30000x30000.png": "image_too_large",
           "bomb_12000x12000.png": "image_too_large"}
ODD_BUT_VALID = ("rgba_alpha.png", "grayscale.jpg", "cmyk.jpg", "tiny_1x1.jpg",
                 "wide_4000x10.jpg", "animated.gif", "image.webp", "exif_rotated.jpg",
                 "jpeg_named.png", "gray16.png")
# /predict is called in chunks that are a multiple of settings.feature_batch_size (16), so both
# paths run the backbone on the very same batches of images.
PREDICT_CHUNK = 48


def train_photos(label: str) -> list[Path]:
    return sorted((HYMENOPTERA / "train" / label).glob("*.jpg"))


@pytest.fixture(scope="module")
def api(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TestClient]:
    settings = make_settings(tmp_path_factory.mktemp("batches") / "data")
    with TestClient(create_app(settings)) as client:
        with runtime_of(client).session_factory() as session:
            create_account(session, name="other", key=OTHER_KEY)
        yield client


def runtime_of(client: TestClient) -> Runtime:
    return client.app.state.runtime  # type: ignore[attr-defined,no-any-return]


def train(client: TestClient, model_id: str, per_class: slice) -> None:
    for label in ("ants", "bees"):
        assert upload(client, model_id, label, train_photos(label)[per_class]).status_code == 200
    job_id = client.post(f"/api/v1/models/{model_id}/train", headers=bearer()).json()["job_id"]
    assert wait_for_job(client, job_id)["status"] == "succeeded"


@pytest.fixture(scope="module")
def insects(api: TestClient) -> str:
    """A model trained on 20 ants and 20 bees."""
    model_id = create_model(api, name="insects", categories=("ants", "bees"))
    train(api, model_id, slice(0, 20))
    return model_id


class HeldQueue:
    """A queue that runs nothing: jobs stay `queued` until the test runs them itself."""

    def __init__(self) -> None:
        self.held: list[str] = []

    def submit(self, job_id: str, *, lane: str = "jobs", kind: str | None = None,
               delay: float = 0.0) -> None:
        self.held.append(job_id)

    def start(self) -> None: ...

    def stop(self) -> None: ...


@contextmanager
def held_jobs(client: TestClient) -> Iterator[HeldQueue]:
    runtime = runtime_of(client)
    real, held = runtime.queue, HeldQueue()
    runtime.queue = held
    try:
        yield held
    finally:
        runtime.queue = real


@pytest.fixture
def emitted(monkeypatch: pytest.MonkeyPatch) -> list[dict[str, Any]]:
    """The webhook events the batches emit (the webhook service is tested on its own)."""
    calls: list[dict[str, Any]] = []

    def record(session: object, runtime: object, **event: Any) -> list[str]:
        calls.append(event)
        return []

    monkeypatch.setattr(webhooks, "emit", record)
    return calls


def predict(client: TestClient, model_id: str, paths: list[Path],
            query: str = "") -> list[dict[str, Any]]:
    results: list[dict[str, Any]] = []
    for start in range(0, len(paths), PREDICT_CHUNK):
        response = client.post(f"/api/v1/models/{model_id}/predict{query}",
                               files=files_of(*paths[start:start + PREDICT_CHUNK]),
                               headers=bearer())
        assert response.status_code == 200, response.text
        results.extend(response.json()["results"])
    return results


def batch_url(model_id: str, batch_id: str = "") -> str:
    return f"/api/v1/models/{model_id}/batch-predictions" + (f"/{batch_id}" if batch_id else "")


def all_results(client: TestClient, model_id: str, batch_id: str,
                per_page: int = 50) -> list[dict[str, Any]]:
    results: list[dict[str, Any]] = []
    page = 1
    while True:
        body = client.get(f"{batch_url(model_id, batch_id)}?page={page}&per_page={per_page}",
                          headers=bearer()).json()
        assert body["status"] == "succeeded", body
        results.extend(body["results"])
        if len(results) >= body["count"] or not body["results"]:
            assert len(results) == body["count"]
            return results
        page += 1


def csv_rows(client: TestClient, model_id: str, batch_id: str) -> list[dict[str, str]]:
    response = client.get(f"{batch_url(model_id, batch_id)}/results.csv", headers=bearer())
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("text/csv")
    assert response.headers["content-disposition"].startswith("attachment")
    reader = csv.DictReader(io.StringIO(response.text))
    assert reader.fieldnames == ["file", "image_id", "label", "probability", "ants", "bees",
                                 "error"]
    return list(reader)


def labelled_as(result: dict[str, Any]) -> tuple[str, float, list[tuple[str, float]]]:
    return (result["label"], result["probability"],
            [(p["label"], p["probability"]) for p in result["predictions"]])


def settle(client: TestClient) -> None:
    """Wait until the queue has run everything, what jobs do after their commit included."""
    runtime_of(client).queue.join(60)  # type: ignore[union-attr]


def batch_folder(client: TestClient, batch_id: str) -> Path:
    return runtime_of(client).settings.data_dir / "batches" / batch_id


def test_a_batch_of_every_val_photo_labels_them_as_predict_does(
        api: TestClient, insects: str, emitted: list[dict[str, Any]]) -> None:
    assert len(VAL) == 153
    response = api.post(batch_url(insects), files=files_of(*VAL), headers=bearer())
    assert response.status_code == 202, response.text
    accepted = response.json()
    assert accepted["batch_id"] == accepted["job_id"]
    assert (accepted["version"], accepted["count"], accepted["accepted"],
            accepted["rejected"]) == (1, 153, 153, [])

    job = wait_for_job(api, accepted["job_id"])
    settle(api)
    assert (job["kind"], job["status"], job["progress"]) == ("batch_predict", "succeeded", 1.0)
    results = all_results(api, insects, accepted["batch_id"])
    expected = predict(api, insects, VAL)
    assert [r["file"] for r in results] == [path.name for path in VAL]
    assert all(r["status"] == "ok" and r["image_id"] is None for r in results)
    assert [labelled_as(r) for r in results] == [labelled_as(r) for r in expected]
    truth = [path.parent.name for path in VAL]
    accuracy = sum(r["label"] == t for r, t in zip(results, truth, strict=True)) / len(VAL)
    assert accuracy > 0.8

    rows = csv_rows(api, insects, accepted["batch_id"])
    assert [row["file"] for row in rows] == [path.name for path in VAL]
    for row, result in zip(rows, expected, strict=True):
        assert (row["image_id"], row["label"], row["error"]) == ("", result["label"], "")
        assert float(row["probability"]) == result["probability"]
        assert {label: float(row[label]) for label in ("ants", "bees")} == {
            p["label"]: p["probability"] for p in result["predictions"]}

    detail = api.get(batch_url(insects, accepted["batch_id"]), headers=bearer()).json()
    assert detail["summary"]["labels"] == dict(Counter(r["label"] for r in expected))
    folder = batch_folder(api, accepted["batch_id"])
    assert (folder / "results.json").is_file() and not (folder / "inputs").exists()
    [event] = [e for e in emitted if e["data"]["batch_id"] == accepted["batch_id"]]
    assert (event["event"], event["model_id"], event["data"]["status"]) == (
        "batch_prediction.finished", insects, "succeeded")
    assert event["data"]["summary"]["count"] == 153


def test_a_batch_of_pool_images(api: TestClient, insects: str) -> None:
    photos = VAL[:3] + VAL[-3:]
    pooled = api.post(f"/api/v1/models/{insects}/images", files=files_of(*photos),
                      headers=bearer()).json()["results"]
    ids = [r["image_id"] for r in pooled]
    response = api.post(batch_url(insects), json={"image_ids": ids[::-1]}, headers=bearer())
    assert response.status_code == 202, response.text
    batch_id = response.json()["batch_id"]
    assert wait_for_job(api, batch_id)["status"] == "succeeded"
    results = all_results(api, insects, batch_id)
    assert [r["image_id"] for r in results] == ids[::-1]
    assert [r["file"] for r in results] == [path.name for path in photos[::-1]]
    expected = predict(api, insects, photos[::-1])
    assert [labelled_as(r) for r in results] == [labelled_as(r) for r in expected]
    rows = csv_rows(api, insects, batch_id)
    assert [int(row["image_id"]) for row in rows] == ids[::-1]

    whole = api.post(batch_url(insects), json={"pool": True}, headers=bearer())
    assert whole.status_code == 202, whole.text
    assert whole.json()["count"] == len(ids)
    assert wait_for_job(api, whole.json()["batch_id"])["status"] == "succeeded"
    assert [r["image_id"] for r in all_results(api, insects, whole.json()["batch_id"])] == ids


def test_pool_batches_refuse_ids_that_are_not_in_the_pool(api: TestClient, insects: str) -> None:
    pool = api.get(f"/api/v1/models/{insects}/images?labelled=false", headers=bearer()).json()
    labelled = api.get(f"/api/v1/models/{insects}/images?labelled=true&per_page=2",
                       headers=bearer()).json()
    other_model = create_model(api, name="elsewhere", categories=("ants", "bees"))
    theirs = api.post(f"/api/v1/models/{other_model}/images", files=files_of(VAL[5]),
                      headers=bearer()).json()["results"][0]["image_id"]
    before = api.get(batch_url(insects), headers=bearer()).json()["total"]
    pool_id = pool["items"][0]["id"] if pool["items"] else None

    unknown = api.post(batch_url(insects), json={"image_ids": [999_999, theirs]},
                       headers=bearer())
    assert unknown.status_code == 404, unknown.text
    assert unknown.json()["error"]["details"]["missing"] == sorted([theirs, 999_999])
    assert "999999" in unknown.json()["error"]["message"]
    labelled_ids = [image["id"] for image in labelled["items"]]
    in_categories = api.post(batch_url(insects),
                             json={"image_ids": [*labelled_ids, pool_id or labelled_ids[0]]},
                             headers=bearer())
    assert in_categories.status_code == 422
    assert in_categories.json()["error"]["code"] == "image_labelled"
    assert in_categories.json()["error"]["details"]["labelled"] == sorted(labelled_ids)
    too_many = api.post(batch_url(insects), json={"image_ids": list(range(1, 10_002))},
                        headers=bearer())
    assert too_many.status_code == 413
    assert too_many.json()["error"]["code"] == "too_many_images"
    for body in ({}, {"pool": True, "image_ids": [1]}, {"image_ids": []}, {"pool": False},
                 {"image_ids": ["x"]}, {"pool": True, "reject": 1}):
        response = api.post(batch_url(insects), json=body, headers=bearer())
        assert response.status_code == 422, (body, response.text)
        assert response.json()["error"]["code"] == "invalid_request"
    empty_pool = api.post(batch_url(other_model), json={"pool": True}, headers=bearer())
    assert empty_pool.status_code == 409  # not trained comes first
    no_input = api.post(batch_url(insects), headers=bearer())
    assert no_input.status_code == 400 and no_input.json()["error"]["code"] == "no_files"
    assert api.get(batch_url(insects), headers=bearer()).json()["total"] == before


def test_refused_files_keep_their_place_and_the_others_run(api: TestClient,
                                                           insects: str) -> None:
    paths = [VAL[0], *(BAD_INPUTS / name for name in REFUSED),
             *(BAD_INPUTS / name for name in ODD_BUT_VALID), VAL[-1]]
    expected = predict(api, insects, paths, "?reject_unknown=true")
    with held_jobs(api):
        response = api.post(f"{batch_url(insects)}?reject_unknown=true",
                            files=files_of(*paths), headers=bearer())
    assert response.status_code == 202, response.text
    accepted = response.json()
    assert accepted["count"] == len(paths) and accepted["accepted"] == len(paths) - len(REFUSED)
    assert {r["file"]: r["error"]["code"] for r in accepted["rejected"]} == REFUSED
    assert [r["index"] for r in accepted["rejected"]] == list(range(1, 1 + len(REFUSED)))
    # only the accepted bytes are kept, and never as training images
    kept = sorted((batch_folder(api, accepted["batch_id"]) / "inputs").iterdir())
    assert [path.read_bytes() for path in kept] == [
        path.read_bytes() for path in paths if path.name not in REFUSED]

    run_job(runtime_of(api), accepted["batch_id"])
    results = all_results(api, insects, accepted["batch_id"])
    assert [r["file"] for r in results] == [path.name for path in paths]
    for result, answer in zip(results, expected, strict=True):
        assert result["status"] == answer["status"]
        if answer["status"] == "ok":
            assert labelled_as(result) == labelled_as(answer)
        else:
            assert result["error"] == answer["error"]
    assert any(r["label"] == "unknown" for r in results)  # drawings are neither ants nor bees
    rows = csv_rows(api, insects, accepted["batch_id"])
    refused = [row for row in rows if row["error"]]
    assert [(row["file"], row["error"]) for row in refused] == list(REFUSED.items())
    assert all(row["label"] == row["probability"] == row["ants"] == "" for row in refused)
    summary = api.get(batch_url(insects, accepted["batch_id"]), headers=bearer()).json()
    assert (summary["summary"]["labelled"], summary["summary"]["rejected"]) == (
        len(paths) - len(REFUSED), len(REFUSED))


def test_a_batch_of_only_refused_files_is_refused_like_predict(api: TestClient,
                                                               insects: str) -> None:
    before = api.get(batch_url(insects), headers=bearer()).json()["total"]
    for names in (["truncated.jpg"], ["bomb_30000x30000.png"], ["empty.jpg", "truncated.jpg"]):
        files = files_of(*(BAD_INPUTS / name for name in names))
        batch = api.post(batch_url(insects), files=files, headers=bearer())
        single = api.post(f"/api/v1/models/{insects}/predict", files=files, headers=bearer())
        assert 400 <= batch.status_code < 500
        assert (batch.status_code, batch.json()["error"]["code"]) == (
            single.status_code, single.json()["error"]["code"])
    assert api.get(batch_url(insects), headers=bearer()).json()["total"] == before
    folders = runtime_of(api).settings.data_dir / "batches"
    assert {p.name for p in folders.glob("*")} <= {
        b["batch_id"] for b in api.get(f"{batch_url(insects)}?per_page=200",
                                       headers=bearer()).json()["items"]}


def test_409_before_training_and_before_the_batch_finishes(
        api: TestClient, insects: str, emitted: list[dict[str, Any]]) -> None:
    untrained = create_model(api, name="untrained", categories=("ants", "bees"))
    response = api.post(batch_url(untrained), files=files_of(VAL[0]), headers=bearer())
    assert response.status_code == 409
    assert response.json()["error"]["code"] == "model_not_trained"
    missing = api.post(f"{batch_url(insects)}?version=99", files=files_of(VAL[0]),
                       headers=bearer())
    assert missing.status_code == 404
    one_each = create_model(api, name="one each", categories=("ants", "bees"))
    train(api, one_each, slice(0, 1))
    uncalibrated = api.post(f"{batch_url(one_each)}?reject_unknown=true", files=files_of(VAL[0]),
                            headers=bearer())
    assert uncalibrated.status_code == 409
    assert uncalibrated.json()["error"]["code"] == "unknown_not_calibrated"
    assert api.get(batch_url(one_each), headers=bearer()).json()["total"] == 0

    images_before = api.get(f"/api/v1/models/{insects}/images", headers=bearer()).json()["total"]
    with held_jobs(api) as queue:
        first = api.post(batch_url(insects), files=files_of(*VAL[:3]), headers=bearer()).json()
        second = api.post(batch_url(insects), files=files_of(*VAL[3:5]), headers=bearer()).json()
    assert queue.held == [first["batch_id"], second["batch_id"]]
    waiting = api.get(batch_url(insects, second["batch_id"]), headers=bearer()).json()
    assert (waiting["status"], waiting["progress"], waiting["results"], waiting["count"]) == (
        "queued", 0.0, None, 2)
    csv_early = api.get(f"{batch_url(insects, second['batch_id'])}/results.csv",
                        headers=bearer())
    assert csv_early.status_code == 409
    assert csv_early.json()["error"]["code"] == "batch_not_finished"
    assert len(list((batch_folder(api, second["batch_id"]) / "inputs").iterdir())) == 2
    assert api.get(f"/api/v1/models/{insects}/images",
                   headers=bearer()).json()["total"] == images_before

    listed = api.get(f"{batch_url(insects)}?per_page=1", headers=bearer()).json()
    assert [b["batch_id"] for b in listed["items"]] == [second["batch_id"]]
    assert listed["total"] >= 2
    page_two = api.get(f"{batch_url(insects)}?per_page=1&page=2", headers=bearer()).json()
    assert [b["batch_id"] for b in page_two["items"]] == [first["batch_id"]]

    runtime = runtime_of(api)
    run_job(runtime, second["batch_id"])
    assert len(csv_rows(api, insects, second["batch_id"])) == 2
    assert not (batch_folder(api, second["batch_id"]) / "inputs").exists()
    assert [e["data"]["status"] for e in emitted] == ["succeeded"]

    class Crash(BaseException):
        """The worker process dying mid-job."""

    def crash(*args: object, **kwargs: object) -> None:
        raise Crash

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(job_service, "set_progress", crash)
        with pytest.raises(Crash):
            run_job(runtime, first["batch_id"])
    with runtime.session_factory() as session:
        job_service.recover_interrupted_jobs(session, max_attempts=2)
    run_job(runtime, first["batch_id"])
    assert [r["file"] for r in all_results(api, insects, first["batch_id"])] == [
        path.name for path in VAL[:3]]
    assert [labelled_as(r) for r in all_results(api, insects, first["batch_id"])] == [
        labelled_as(r) for r in predict(api, insects, VAL[:3])]


def test_the_batch_keeps_the_version_fixed_at_request_time(
        api: TestClient, insects: str, emitted: list[dict[str, Any]]) -> None:
    model_id = create_model(api, name="two versions", categories=("ants", "bees"))
    train(api, model_id, slice(0, 4))
    photos = VAL[:4] + VAL[-4:]
    first_version = predict(api, model_id, photos)
    with held_jobs(api):
        pinned = api.post(batch_url(model_id), files=files_of(*photos), headers=bearer()).json()
    assert pinned["version"] == 1
    train(api, model_id, slice(4, 20))  # version 2, active now
    second_version = predict(api, model_id, photos)
    assert [labelled_as(r) for r in second_version] != [labelled_as(r) for r in first_version]

    assert api.post(batch_url(model_id), json={"pool": True},
                    headers=bearer()).json()["error"]["code"] == "pool_empty"
    run_job(runtime_of(api), pinned["batch_id"])
    results = all_results(api, model_id, pinned["batch_id"])
    assert [labelled_as(r) for r in results] == [labelled_as(r) for r in first_version]
    assert api.get(batch_url(model_id, pinned["batch_id"]), headers=bearer()).json()[
        "version"] == 1
    latest = api.post(batch_url(model_id), files=files_of(*photos), headers=bearer()).json()
    assert latest["version"] == 2
    assert wait_for_job(api, latest["batch_id"])["status"] == "succeeded"
    settle(api)
    assert [labelled_as(r) for r in all_results(api, model_id, latest["batch_id"])] == [
        labelled_as(r) for r in second_version]

    with held_jobs(api):
        doomed = api.post(f"{batch_url(model_id)}?version=1", files=files_of(*photos),
                          headers=bearer()).json()
    assert doomed["version"] == 1
    assert api.delete(f"/api/v1/models/{model_id}/versions/1", headers=bearer()).status_code == 204
    run_job(runtime_of(api), doomed["batch_id"])
    failed = api.get(batch_url(model_id, doomed["batch_id"]), headers=bearer()).json()
    assert failed["status"] == "failed" and "Version 1 was deleted" in failed["error"]
    csv_failed = api.get(f"{batch_url(model_id, doomed['batch_id'])}/results.csv",
                         headers=bearer())
    assert csv_failed.status_code == 409
    assert csv_failed.json()["error"]["code"] == "batch_failed"
    assert not batch_folder(api, doomed["batch_id"]).exists()
    assert emitted[-1]["data"]["status"] == "failed"
    assert emitted[-1]["data"]["batch_id"] == doomed["batch_id"]


def test_another_account_sees_404_on_every_route(api: TestClient, insects: str) -> None:
    with held_jobs(api):
        mine = api.post(batch_url(insects), files=files_of(VAL[0]), headers=bearer()).json()
    theirs = create_model(api, name="theirs", categories=("ants", "bees"), key=OTHER_KEY)
    other = bearer(OTHER_KEY)
    batch_id = mine["batch_id"]
    requests = [
        api.post(batch_url(insects), files=files_of(VAL[0]), headers=other),
        api.post(batch_url(insects), json={"pool": True}, headers=other),
        api.get(batch_url(insects), headers=other),
        api.get(batch_url(insects, batch_id), headers=other),
        api.get(f"{batch_url(insects, batch_id)}/results.csv", headers=other),
        api.get(batch_url(theirs, batch_id), headers=other),
        api.get(f"{batch_url(theirs, batch_id)}/results.csv", headers=other),
        api.get(f"/api/v1/jobs/{batch_id}", headers=other),
    ]
    for response in requests:
        assert response.status_code == 404, response.text
        assert "ants" not in response.text and VAL[0].name not in response.text
    assert api.get(batch_url(theirs), headers=other).json()["items"] == []
    assert api.get(batch_url(insects, batch_id), headers=bearer()).status_code == 200


def test_deleting_the_model_removes_its_batches(api: TestClient) -> None:
    model_id = create_model(api, name="short-lived", categories=("ants", "bees"))
    train(api, model_id, slice(0, 2))
    with held_jobs(api):
        batch = api.post(batch_url(model_id), files=files_of(VAL[0]), headers=bearer()).json()
    assert batch_folder(api, batch["batch_id"]).is_dir()
    assert api.delete(f"/api/v1/models/{model_id}", headers=bearer()).status_code == 204
    assert not batch_folder(api, batch["batch_id"]).exists()
