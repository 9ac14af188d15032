"""NanoNets v2 `MultiLabelClassification` routes (app/api/v2/multilabel.py): their shapes, sent
as the official client sends them, then the official client itself, `nanonets` 2.0.5
unchanged, against a live `nanonet serve` (the set-up is test_image_categorization's)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx2 as httpx
import pytest
from fastapi.testclient import TestClient

from app.api.v2.common import STATUSES
from bench.server import Server, embedded_server
from tests.api.v2.test_image_categorization import (
    BAD_JPEG,
    CLIENT_TIMEOUT_S,
    IGNORE_UNCLOSED,
    IGNORE_UNRAISABLE,
    basic,
    client,  # noqa: F401  # the TestClient fixture
    is_v2_error,
    text_part,
    url_server,  # noqa: F401  # the URL server fixture
    wait_until_hosted,
)
from tests.conftest import DATASETS, bearer, tree_photos
from tests.multilabel_set import available, build_multilabel_set
from tests.url_server import UrlServer

MLC = "/api/v2/MultiLabelClassification"
CATEGORIES = ["insect", "ant", "bee", "flower"]


def create(client: TestClient, categories: list[str] = CATEGORIES,  # noqa: F811
           headers: dict[str, str] | None = None) -> dict[str, Any]:
    """As the client creates one: a JSON body (NanoNets' own sample sends no Content-Type)."""
    response = client.post(f"{MLC}/Model/", content=json.dumps({"categories": categories}),
                           headers={**basic(), **(headers or {"Content-Type": "application/json"})})
    assert response.status_code == 200, response.text
    return response.json()


def files_and_data(items: list[tuple[Path, list[str]]]) -> list[tuple[str, Any]]:
    """The client's UploadFiles batch: `files` parts and one `data` part (filename="")."""
    data = [{"filename": path.name, "categories": labels} for path, labels in items]
    return [*(("files", (path.name, path.read_bytes(), "image/jpeg")) for path, _ in items),
            text_part("data", json.dumps(data))]


# --- shapes ---------------------------------------------------------------------------------

def test_create_answers_a_multilabel_model_object(client: TestClient) -> None:  # noqa: F811
    model = create(client)
    assert model == {"model_id": model["model_id"], "model_type": "multilabelclassification",
                     "state": 0, "status": STATUSES[0],
                     "categories": [{"name": name, "count": 0} for name in CATEGORIES]}
    native = client.get(f"/api/v1/models/{model['model_id']}", headers=bearer()).json()
    assert native["kind"] == "multi_label"
    bare = create(client, ["a", "b"], headers={})  # no Content-Type: still JSON
    assert bare["model_type"] == "multilabelclassification"
    for path in (f"{MLC}/Model/{model['model_id']}", f"{MLC}/Model/{model['model_id']}/"):
        assert client.get(path, headers=basic()).json() == model
    assert {m["model_id"] for m in client.get(f"{MLC}/Models/", headers=basic()).json()} == {
        model["model_id"], bare["model_id"]}
    # a single-label model is no MultiLabelClassification one, and the other way round
    single = client.post("/api/v2/ImageCategorization/Model/", data={"categories": ["x", "y"]},
                         headers=basic()).json()["model_id"]
    for url in (f"{MLC}/Model/{single}", f"{MLC}/Model/{single}/Annotations",
                f"/api/v2/ImageCategorization/Model/?modelId={model['model_id']}"):
        gone = client.get(url, headers=basic())
        assert gone.status_code == 404 and is_v2_error(gone.json(), 404), url
    broken = client.post(f"{MLC}/Model/", content=b"{not json", headers=basic())
    assert broken.status_code == 400 and is_v2_error(broken.json(), 400)
    one = client.post(f"{MLC}/Model/", json={"categories": ["a"]}, headers=basic())
    assert one.status_code == 422 and one.json()["errors"][0]["reason"] == "too_few_categories"


def test_upload_files_with_data_and_the_annotations(client: TestClient) -> None:  # noqa: F811
    model_id = create(client)["model_id"]
    hemlock, cherry = tree_photos("hemlock"), tree_photos("japanese_cherry")
    items = [(hemlock[0], ["insect", "ant"]), (hemlock[1], ["insect", "bee"]),
             (cherry[0], ["flower"]), (cherry[1], [])]
    response = client.post(f"{MLC}/Model/{model_id}/UploadFiles/", files=files_and_data(items),
                           headers=basic())
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["state"] == 2
    assert body["categories"] == [{"name": "insect", "count": 2}, {"name": "ant", "count": 1},
                                  {"name": "bee", "count": 1}, {"name": "flower", "count": 1}]
    annotations = client.get(f"{MLC}/Model/{model_id}/Annotations", headers=basic())
    assert annotations.status_code == 200, annotations.text
    answer = annotations.json()
    assert set(answer) == {"Meta", "Data"}
    assert answer["Meta"] == body  # the model object's keys, lower case, as the client reads
    assert [(d["filename"], sorted(d["categories"])) for d in answer["Data"]] == [
        (hemlock[0].name, ["ant", "insect"]), (hemlock[1].name, ["bee", "insect"]),
        (cherry[0].name, ["flower"]), (cherry[1].name, [])]  # the last one in the pool
    assert all(isinstance(d["id"], str) for d in answer["Data"])

    # data by name when it does not pair one to one; a part with no entry goes to the pool
    partly = [("files", (hemlock[2].name, hemlock[2].read_bytes(), "image/jpeg")),
              ("files", (hemlock[3].name, hemlock[3].read_bytes(), "image/jpeg")),
              text_part("data", json.dumps([{"filename": hemlock[3].name,
                                             "categories": "insect,bee"}]))]
    assert client.post(f"{MLC}/Model/{model_id}/UploadFiles/", files=partly,
                       headers=basic()).status_code == 200
    data = client.get(f"{MLC}/Model/{model_id}/Annotations", headers=basic()).json()["Data"]
    assert [sorted(d["categories"]) for d in data[4:]] == [[], ["bee", "insect"]]

    # errors in the v2 envelope: bad data, an unknown category, a part that is no image
    bad = client.post(f"{MLC}/Model/{model_id}/UploadFiles/", headers=basic(), files=[
        ("files", (hemlock[4].name, hemlock[4].read_bytes(), "image/jpeg")),
        text_part("data", "[{oops")])
    assert bad.status_code == 400 and bad.json()["errors"][0]["reason"] == "invalid_json"
    unknown = client.post(f"{MLC}/Model/{model_id}/UploadFiles/", headers=basic(),
                          files=files_and_data([(hemlock[4], ["oak"])]))
    assert unknown.status_code == 422 and unknown.json()["errors"][0]["reason"] == \
        "unknown_category"
    some = client.post(f"{MLC}/Model/{model_id}/UploadFiles/", headers=basic(), files=[
        ("files", (hemlock[4].name, hemlock[4].read_bytes(), "image/jpeg")), ("files", BAD_JPEG),
        text_part("data", json.dumps([{"filename": hemlock[4].name, "categories": ["flower"]},
                                      {"filename": "broken.jpg", "categories": ["flower"]}]))])
    assert some.status_code == 202, some.text
    assert [e["reason"] for e in some.json()["errors"]] == ["corrupt_image"]
    assert some.json()["categories"][3] == {"name": "flower", "count": 2}


def test_upload_urls_per_url_labels(client: TestClient,  # noqa: F811
                                    url_server: UrlServer) -> None:  # noqa: F811
    model_id = create(client)["model_id"]
    photos = tree_photos("hemlock")[:3]
    urls = [url_server.file_url(p) for p in photos]
    missing = url_server.url("/status/404")
    data = [{"filename": urls[0], "categories": ["insect", "ant"]},
            {"filename": missing, "categories": ["flower"]},
            {"filename": urls[1], "categories": ["insect", "bee"]}]
    response = client.post(f"{MLC}/Model/{model_id}/UploadUrls/", headers=basic(), data={
        "urls": [urls[0], missing, urls[1]], "data": json.dumps(data)})
    assert response.status_code == 202, response.text  # the 404 URL is listed, the rest kept
    assert [e["message"].split(": ")[0] for e in response.json()["errors"]] == [missing]
    assert response.json()["categories"] == [
        {"name": "insect", "count": 2}, {"name": "ant", "count": 1}, {"name": "bee", "count": 1},
        {"name": "flower", "count": 0}]  # the failed URL's labels went to no other image
    # the client's upload_image_url: its own path, modelId in the form, flat categories
    one = client.post(f"{MLC}/UploadUrls/", headers={
        **basic(), "accept": "application/x-www-form-urlencoded"},
        data={"urls": [urls[2]], "modelId": model_id, "categories": ["insect", "flower"]})
    assert one.status_code == 200, one.text
    assert one.json()["categories"][0] == {"name": "insect", "count": 3}
    assert one.json()["categories"][3] == {"name": "flower", "count": 1}
    # its upload_image_urls flattens the lists: which URL has which cannot be told
    flat = client.post(f"{MLC}/UploadUrls/", headers=basic(), data={
        "urls": urls[:2], "modelId": model_id, "categories": ["insect", "ant", "insect"]})
    assert flat.status_code == 400 and flat.json()["errors"][0]["reason"] == \
        "ambiguous_categories"
    none = client.post(f"{MLC}/UploadUrls/", headers=basic(), data={"modelId": model_id})
    assert none.status_code == 400 and none.json()["errors"][0]["reason"] == "no_urls"


def test_predicting_before_ready_is_409(client: TestClient,  # noqa: F811
                                        url_server: UrlServer) -> None:  # noqa: F811
    model_id = create(client)["model_id"]
    photo = tree_photos("hemlock")[0]
    by_file = client.post(f"{MLC}/Model/{model_id}/LabelFiles/", headers=basic(), files=[
        ("files", (photo.name, photo.read_bytes())), text_part("modelId", model_id)])
    by_url = client.post(f"{MLC}/Model/{model_id}/LabelUrls/", headers=basic(),
                         data={"modelId": model_id, "urls": [url_server.file_url(photo)]})
    for response in (by_file, by_url):
        assert response.status_code == 409, response.text
        assert is_v2_error(response.json(), 409)
        assert response.json()["errors"][0]["reason"] == "Model is not ready"
    untrainable = client.post(f"{MLC}/Model/{model_id}/Train/?modelId={model_id}",
                              headers=basic())
    assert untrainable.status_code >= 400 and is_v2_error(untrainable.json(),
                                                          untrainable.status_code)


# --- the official client, unchanged, against a live server ---------------------------------

# MobileNetV2 without augmented views keeps training and the predictions short.
SERVER_ENV = {"NANONET_BACKBONES": "mobilenet_v2", "NANONET_AUGMENT_VIEWS": "0",
              "NANONET_URL_ALLOW_PRIVATE": "true"}


@pytest.fixture(scope="module")
def live() -> Iterator[Server]:
    with embedded_server(SERVER_ENV) as running:
        yield running


@pytest.fixture
def nanonets_client(live: Server, monkeypatch: pytest.MonkeyPatch) -> Any:
    import nanonets
    import nanonets.model
    import requests

    original_init = nanonets.model.Model.__init__

    def init(self: Any, *args: Any, **kwargs: Any) -> None:
        original_init(self, *args, **kwargs)
        self.host = f"{live.url}/api/v2/"

    original_request = requests.Session.request

    def request(self: Any, method: str, url: str, **kwargs: Any) -> Any:
        kwargs.setdefault("timeout", CLIENT_TIMEOUT_S)
        return original_request(self, method, url, **kwargs)

    monkeypatch.setattr(nanonets.model.Model, "__init__", init)
    monkeypatch.setattr(requests.Session, "request", request)
    return nanonets


def micro_f1(truth: dict[str, set[str]], predicted: dict[str, set[str]]) -> float:
    tp = sum(len(truth[n] & predicted[n]) for n in truth)
    fp = sum(len(predicted[n] - truth[n]) for n in truth)
    fn = sum(len(truth[n] - predicted[n]) for n in truth)
    return 2 * tp / (2 * tp + fp + fn) if tp else 0.0


def selected(prediction: list[dict[str, Any]]) -> set[str]:
    return {p["label"] for p in prediction if p["selected"]}


@pytest.mark.slow
@IGNORE_UNCLOSED
@IGNORE_UNRAISABLE
def test_official_client_trains_multilabel_and_predicts_held_out(
        nanonets_client: Any, live: Server, tmp_path: Path,
        capsys: pytest.CaptureFixture[str]) -> None:
    if not available():
        pytest.skip(f"shared datasets not found at {DATASETS}")
    data = build_multilabel_set(tmp_path, plan="client")
    model = nanonets_client.MultilabelClassification(live.key, list(data.categories))
    assert isinstance(model.model_id, str)
    train = {str(path): list(labels) for path, labels in data.train}
    assert len(train) == len(data.train) > 50
    response = model.train(train, data_path_type="files")
    assert response.status_code == 200, response.text
    assert response.json()["state"] in (3, 4)
    state = wait_until_hosted(model)
    assert state["state"] == 5, state
    counts = {c["name"]: c["count"] for c in state["categories"]}
    expected = {name: sum(name in labels for _, labels in data.train) for name in data.categories}
    assert counts == expected and min(counts.values()) > 50, counts

    held_out = {path.name: set(labels) for path, labels in data.heldout}
    assert len(held_out) == len(data.heldout)  # unique basenames: the client keys by them
    first = data.heldout[0].path
    one = model.predict_for_file(str(first))
    assert set(one) == {first.name}
    assert sorted(p["label"] for p in one[first.name]) == sorted(data.categories)
    predictions = model.predict_for_files([str(path) for path, _ in data.heldout])
    assert set(predictions) == set(held_out)
    for prediction in predictions.values():
        assert [set(p) for p in prediction] == [{"label", "probability", "selected",
                                                 "threshold"}] * len(data.categories)
        assert all(0 <= p["probability"] <= 1 for p in prediction)
    chosen = {name: selected(prediction) for name, prediction in predictions.items()}
    f1 = micro_f1(held_out, chosen)
    with capsys.disabled():
        print(f"\nnanonets client, multi-label held-out micro-F1: {f1:.4f} "  # noqa: T201
              f"({len(held_out)} images)")
    assert f1 >= 0.85, f1

    singles = [path for path, _ in data.heldout if not path.name.startswith("collage_")][:4]
    with UrlServer(DATASETS) as server:
        urls = [server.file_url(path) for path in singles]
        by_url = model.predict_for_urls(urls)
        assert set(by_url) == set(urls)
        # the same bytes by URL get the same labels as by file
        assert [selected(by_url[u]) for u in urls] == [chosen[p.name] for p in singles]
        missing = server.url("/status/404")
        partly = model.predict_for_urls([urls[0], missing])
        assert partly[missing] == [] and selected(partly[urls[0]]) == chosen[singles[0].name]
    answer = httpx.post(f"{live.url}{MLC}/Model/{model.model_id}/LabelFiles/",
                        files=[("files", (first.name, first.read_bytes()))],
                        headers=basic(live.key), timeout=60).json()
    item = answer["result"][0]
    assert answer["message"] == "Success" and item["labels"] == [
        p["label"] for p in item["prediction"] if p["selected"]]
