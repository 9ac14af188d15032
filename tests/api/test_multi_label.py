"""Multi-label NanoNets over /api/v1: created with `kind`, images given several labels per file,
trained into one-vs-rest heads with per-category thresholds, and predicting every category
with its probability and whether it holds. Real photos: tests/multilabel_set.py."""

from __future__ import annotations

import numpy as np
import pytest
from fastapi.testclient import TestClient
from sklearn.metrics import f1_score

from app.main import create_app
from tests.conftest import bearer, files_of, make_settings, tree_photos, wait_for_job
from tests.multilabel_set import MultiLabelSet, label_matrix, multilabel_set  # noqa: F401

pytestmark = pytest.mark.slow

BATCH = 20


def create(client: TestClient, categories: tuple[str, ...], kind: str = "multi_label") -> str:
    response = client.post("/api/v1/models", headers=bearer(), json={
        "name": "multi", "categories": list(categories), "kind": kind})
    assert response.status_code == 201, response.text
    assert response.json()["kind"] == kind
    return response.json()["id"]


def upload_labelled(client: TestClient, model_id: str, examples) -> list[dict]:  # type: ignore[no-untyped-def]
    results = []
    for start in range(0, len(examples), BATCH):
        chunk = examples[start:start + BATCH]
        response = client.post(
            f"/api/v1/models/{model_id}/images", headers=bearer(),
            data={"labels": [",".join(labels) for _, labels in chunk]},
            files=files_of(*[path for path, _ in chunk]))
        assert response.status_code == 200, response.text
        results += response.json()["results"]
    return results


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory, multilabel_set: MultiLabelSet):  # noqa: F811  # type: ignore[no-untyped-def]
    settings = make_settings(tmp_path_factory.mktemp("multi"), extract_on_upload=False)
    with TestClient(create_app(settings)) as client:
        model_id = create(client, multilabel_set.categories)
        results = upload_labelled(client, model_id, multilabel_set.train)
        assert {r["status"] for r in results} == {"accepted"}
        assert all(tuple(r["labels"]) == labels
                   for r, (_, labels) in zip(results, multilabel_set.train, strict=True))
        job_id = client.post(f"/api/v1/models/{model_id}/train", headers=bearer()).json()["job_id"]
        job = wait_for_job(client, job_id)
        assert job["status"] == "succeeded", job
        yield client, model_id


def test_categories_count_every_image_carrying_them(trained, multilabel_set: MultiLabelSet) -> None:  # noqa: F811  # type: ignore[no-untyped-def]
    client, model_id = trained
    model = client.get(f"/api/v1/models/{model_id}", headers=bearer()).json()
    expected = label_matrix(multilabel_set.train, multilabel_set.categories).sum(axis=0)
    assert [c["count"] for c in model["categories"]] == [int(n) for n in expected]
    assert model["version"]["image_count"] == len(multilabel_set.train)


def test_metrics_are_per_category_and_overall(trained) -> None:  # type: ignore[no-untyped-def]
    client, model_id = trained
    metrics = client.get(f"/api/v1/models/{model_id}", headers=bearer()).json()["metrics"]
    assert metrics["kind"] == "multi_label" and metrics["selection"] == "nested"
    assert metrics["n_images"] == 120 and 0 <= metrics["macro_f1"] <= metrics["micro_f1"] + 1
    for row in metrics["per_category"]:
        assert {"precision", "recall", "f1", "average_precision", "threshold"} <= set(row)
        assert 0 < row["threshold"] < 1
    assert metrics["micro_f1"] >= 0.85


def test_held_out_predictions_reach_micro_f1(trained, multilabel_set: MultiLabelSet) -> None:  # noqa: F811  # type: ignore[no-untyped-def]
    client, model_id = trained
    categories = list(multilabel_set.categories)
    predicted = []
    for start in range(0, len(multilabel_set.heldout), BATCH):
        chunk = multilabel_set.heldout[start:start + BATCH]
        response = client.post(f"/api/v1/models/{model_id}/predict", headers=bearer(),
                               files=files_of(*[path for path, _ in chunk]))
        assert response.status_code == 200, response.text
        for result in response.json()["results"]:
            assert {p["label"] for p in result["predictions"]} == set(categories)
            assert all(p["selected"] == (p["probability"] >= p["threshold"])
                       for p in result["predictions"])
            assert result["labels"] == [p["label"] for p in result["predictions"]
                                        if p["selected"]]
            predicted.append([int(name in result["labels"]) for name in categories])
    truth = label_matrix(multilabel_set.heldout, categories)
    micro = f1_score(truth, np.array(predicted), average="micro")
    print(f"held-out micro-F1 {micro:.3f}")  # noqa: T201
    assert micro >= 0.85


def test_what_multi_label_models_refuse(trained, tmp_path) -> None:  # type: ignore[no-untyped-def]
    client, model_id = trained
    photo = tree_photos("hemlock")[0]
    url = f"/api/v1/models/{model_id}"
    both = client.post(f"{url}/images", headers=bearer(), files=files_of(photo),
                       data={"labels": ["insect"], "category": "insect"})
    assert both.status_code == 422 and both.json()["error"]["code"] == "labels_and_category"
    count = client.post(f"{url}/images", headers=bearer(), files=files_of(photo, photo),
                        data={"labels": ["insect", "ant", "bee"]})
    assert count.status_code == 422 and count.json()["error"]["code"] == "labels_count"
    unknown = client.post(f"{url}/images", headers=bearer(), files=files_of(photo),
                          data={"labels": ["insect,wasp"]})
    assert unknown.status_code == 422 and "wasp" in unknown.json()["error"]["message"]
    assert client.post(f"{url}/predict?reject_unknown=true", headers=bearer(),
                       files=files_of(photo)).status_code == 409
    for path in ("review", "suggestions", "export?format=onnx"):
        answer = client.get(f"{url}/{path}", headers=bearer())
        assert answer.status_code == 409, (path, answer.text)
        assert answer.json()["error"]["code"] == "not_for_multi_label"


def test_labels_are_refused_for_a_single_label_model(tmp_path) -> None:  # type: ignore[no-untyped-def]
    with TestClient(create_app(make_settings(tmp_path))) as client:
        model_id = create(client, ("hemlock", "japanese_cherry"), kind="single_label")
        response = client.post(f"/api/v1/models/{model_id}/images", headers=bearer(),
                               files=files_of(tree_photos("hemlock")[0]),
                               data={"labels": ["hemlock"]})
        assert response.status_code == 422
        assert response.json()["error"]["code"] == "labels_not_allowed"
        bad = client.post("/api/v1/models", headers=bearer(), json={
            "name": "x", "categories": ["a", "b"], "kind": "several"})
        assert bad.status_code == 422


def test_same_bytes_again_gain_the_labels_they_lacked(tmp_path) -> None:  # type: ignore[no-untyped-def]
    with TestClient(create_app(make_settings(tmp_path, extract_on_upload=False))) as client:
        model_id = create(client, ("hemlock", "japanese_cherry"))
        photo = tree_photos("hemlock")[0]
        url = f"/api/v1/models/{model_id}/images"
        first = client.post(url, headers=bearer(), files=files_of(photo),
                            data={"labels": ["hemlock"]}).json()["results"][0]
        again = client.post(url, headers=bearer(), files=files_of(photo),
                            data={"labels": ["hemlock"]}).json()["results"][0]
        more = client.post(url, headers=bearer(), files=files_of(photo),
                           data={"labels": ["hemlock,japanese_cherry"]}).json()["results"][0]
        assert first["status"] == "accepted" and again["status"] == "duplicate"
        assert more["status"] == "accepted" and more["image_id"] == first["image_id"]
        model = client.get(f"/api/v1/models/{model_id}", headers=bearer()).json()
        assert [c["count"] for c in model["categories"]] == [1, 1]


def test_an_image_with_several_labels_is_listed_once_with_all_of_them(tmp_path) -> None:  # type: ignore[no-untyped-def]
    with TestClient(create_app(make_settings(tmp_path, extract_on_upload=False))) as client:
        model_id = create(client, ("hemlock", "japanese_cherry"))
        both, one, none = tree_photos("hemlock")[:3]
        url = f"/api/v1/models/{model_id}/images"
        client.post(url, headers=bearer(), files=files_of(both, one, none),
                    data={"labels": ["japanese_cherry,hemlock", "hemlock", ""]})
        listed = client.get(url, headers=bearer()).json()
        assert listed["total"] == 3
        assert [(item["category"], item["labels"]) for item in listed["items"]] == [
            ("hemlock", ["hemlock", "japanese_cherry"]), ("hemlock", ["hemlock"]), (None, [])]
        cherry = client.get(f"{url}?category=japanese_cherry", headers=bearer()).json()
        assert cherry["total"] == 1 and cherry["items"][0]["file_name"] == both.name
        pool = client.get(f"{url}?labelled=false", headers=bearer()).json()
        assert pool["total"] == 1 and pool["items"][0]["file_name"] == none.name
        single = create(client, ("hemlock", "japanese_cherry"), kind="single_label")
        client.post(f"/api/v1/models/{single}/images", headers=bearer(), files=files_of(one),
                    data={"category": "hemlock"})
        item = client.get(f"/api/v1/models/{single}/images", headers=bearer()).json()["items"][0]
        assert item["labels"] is None and item["category"] == "hemlock"
