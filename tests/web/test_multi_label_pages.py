"""The web form for multi-label models and images by URL, driven like a browser with JavaScript
off: the kind on the create form, ticked categories on upload, the per-category results with
their thresholds, what multi-label models leave out, and the import by URL."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
from fastapi.testclient import TestClient

from app.config import Settings
from app.db.tables import Model, ModelVersion
from app.main import create_app
from app.web import routes as web_routes
from tests.url_server import UrlServer
from tests.web.forms import sign_in

DATASETS = Path(__file__).resolve().parents[2].parent / "shared" / "datasets"
TREES = DATASETS / "customvision_trees"
KEY = "nn_web_key_multi_0123456789abcdef"  # bootstrap keys: 32+ characters
CATEGORIES = ("insect", "ant", "flower")


def settings_for(tmp_path: Path, **overrides: Any) -> Settings:
    # No extraction on upload: these tests look at pages and rows, not features.
    return Settings(data_dir=tmp_path / "data", bootstrap_api_key=KEY,  # type: ignore[arg-type]
                    create_first_account=False, backbones="mobilenet_v2", augment_views=0,
                    extract_on_upload=False, **overrides)


@pytest.fixture
def web(tmp_path: Path) -> Iterator[TestClient]:
    with TestClient(create_app(settings_for(tmp_path))) as client:
        yield sign_in(client, KEY)


def bearer() -> dict[str, str]:
    return {"Authorization": f"Bearer {KEY}"}


def photos(label: str) -> list[Path]:
    return sorted((TREES / "train" / label).glob("*.jpg"))


def files_of(*paths: Path) -> list[tuple[str, tuple[str, bytes, str]]]:
    return [("files", (path.name, path.read_bytes(), "image/jpeg")) for path in paths]


def create(client: TestClient, kind: str | None = "multi_label",
           categories: tuple[str, ...] = CATEGORIES) -> str:
    data = {"name": "bugs and blooms", "categories": ", ".join(categories)}
    if kind is not None:
        data["kind"] = kind
    response = client.post("/web/models", data=data, follow_redirects=False)
    assert response.status_code == 303, response.text
    match = re.fullmatch(r"/web/models/(\w+)", response.headers["location"])
    assert match is not None
    return match.group(1)


def api_model(client: TestClient, model_id: str) -> dict[str, Any]:
    response = client.get(f"/api/v1/models/{model_id}", headers=bearer())
    assert response.status_code == 200, response.text
    return response.json()


def shown_counts(html: str) -> dict[str, int]:
    """{category: count} as the multi-label page's counters show them ("": not labelled)."""
    counts = {name: int(count) for name, count in re.findall(
        r'data-category-count="([^"]+)">[^<]*<span class="count"><span data-count>(\d+)<',
        html)}
    pool = re.search(r'data-pool-count>[^<]*<span class="count"><span data-count>(\d+)<', html)
    assert pool is not None
    counts[""] = int(pool.group(1))
    return counts


def results_block(html: str, css: str = "results") -> str:
    found = re.findall(rf'<ul class="{css}"[^>]*>(.*?)</ul>', html, re.DOTALL)
    filled = [block for block in found if "<li" in block]
    assert len(filled) == 1, found
    return filled[0]


def test_the_create_form_offers_the_kind_and_makes_a_multi_label_model(web: TestClient) -> None:
    form = web.get("/web/models").text
    assert 'name="kind" value="single_label" checked' in form
    assert 'name="kind" value="multi_label"' in form

    model_id = create(web)
    assert api_model(web, model_id)["kind"] == "multi_label"
    page = web.get(f"/web/models/{model_id}").text
    assert 'class="chip kind-chip"' in page and ">multi-label</span>" in page
    # One upload form with a box per category, in place of one drop zone per category.
    assert page.count("data-dropzone") == 1 and "data-multi-label" in page
    assert re.findall(r'<input type="checkbox" name="label" value="([^"]+)">', page) == list(
        CATEGORIES)
    assert "Upload to insect" not in page
    assert shown_counts(page) == {"insect": 0, "ant": 0, "flower": 0, "": 0}
    assert "multi-label</span>" in web.get("/web/models").text

    plain = create(web, kind=None)  # the form's default, and what an old form sends
    assert api_model(web, plain)["kind"] == "single_label"
    single = web.get(f"/web/models/{plain}").text
    assert "data-multi-label" not in single and "Upload to insect" in single
    assert 'name="label"' not in single

    refused = web.post("/web/models", data={"name": "odd", "categories": "a, b",
                                             "kind": "several"})
    assert refused.status_code == 422
    assert "The kind must be one of" in refused.text
    assert 'value="odd"' in refused.text  # the form keeps what was typed


def test_files_get_every_ticked_category_and_the_counts_follow(web: TestClient) -> None:
    model_id = create(web)
    ants = photos("hemlock")[:2]
    page = web.post(f"/web/models/{model_id}/images", data={"category": "", "label": [
        "insect", "ant"]}, files=files_of(*ants))
    assert page.status_code == 200, page.text
    block = results_block(page.text)
    assert "2 of 2 files added." in block
    assert block.count("labelled insect, ant") == 2
    assert shown_counts(page.text) == {"insect": 2, "ant": 2, "flower": 0, "": 0}
    # The boxes stay ticked for the next files, as they were sent.
    assert 'name="label" value="insect" checked' in page.text
    assert 'name="label" value="flower" checked' not in page.text
    counts = {c["name"]: c["count"] for c in api_model(web, model_id)["categories"]}
    assert counts == {"insect": 2, "ant": 2, "flower": 0}

    again = web.post(f"/web/models/{model_id}/images", data={"label": ["insect", "ant"]},
                     files=files_of(ants[0]))
    assert "already in this model with these labels" in results_block(again.text)
    more = web.post(f"/web/models/{model_id}/images", data={"label": ["flower"]},
                    files=files_of(ants[0]))  # the same bytes gain the label they lacked
    assert "labelled flower" in results_block(more.text)
    unticked = web.post(f"/web/models/{model_id}/images", files=files_of(photos("hemlock")[2]))
    assert "not labelled" in results_block(unticked.text)
    assert shown_counts(unticked.text) == {"insect": 2, "ant": 2, "flower": 1, "": 1}

    # A single-label model keeps its category per zone; boxes are refused there.
    single = create(web, kind="single_label")
    refused = web.post(f"/web/models/{single}/images", data={"label": ["insect"]},
                       files=files_of(ants[0]))
    assert refused.status_code == 422
    assert "`labels` is for multi-label models" in refused.text


def test_the_drop_zone_route_takes_ticked_categories_and_answers_the_counts(
        web: TestClient) -> None:
    model_id = create(web)
    photo = photos("hemlock")[0]
    uploaded = web.post(f"/web/json/models/{model_id}/images",
                        data={"category": "", "label": ["insect", "flower"]},
                        files=files_of(photo))
    assert uploaded.status_code == 200, uploaded.text
    body = uploaded.json()
    assert body["accepted"] == 1 and body["results"][0]["labels"] == ["insect", "flower"]
    assert body["categories"] == [{"name": "insect", "count": 1}, {"name": "ant", "count": 0},
                                  {"name": "flower", "count": 1}]
    assert body["unlabelled"] == 0
    unknown = web.post(f"/web/json/models/{model_id}/images", data={"label": ["wasp"]},
                       files=files_of(photo))
    assert unknown.status_code == 422 and "wasp" in unknown.json()["error"]["message"]


def multi_label_metrics() -> dict[str, Any]:
    """The keys and shape training writes for a multi-label version (MultiLabelMetrics)."""
    rows = [("insect", 0.95, 0.9, 0.924, 0.97, 20, 0.41),
            ("ant", 0.8, 0.7, 0.747, 0.81, 10, 0.55),
            ("flower", 1.0, 0.9, 0.947, None, 10, 0.375)]
    return {
        "kind": "multi_label", "micro_f1": 0.883, "macro_f1": 0.873, "micro_precision": 0.91,
        "micro_recall": 0.857, "mean_average_precision": 0.89, "exact_match": 0.7,
        "per_category": [{"label": label, "precision": p, "recall": r, "f1": f,
                          "average_precision": ap, "support": n, "threshold": t}
                         for label, p, r, f, ap, n, t in rows],
        "n_images": 30, "n_folds": 5,
        "method": "nested 5-fold cross-validation (iterative stratification)",
        "backbone": "efficientnet_lite2", "head": "multilabel_logistic", "l2": 0.01,
        "selection": "nested",
    }


def inject_version(client: TestClient, model_id: str, metrics: dict[str, Any]) -> None:
    runtime = client.app.state.runtime  # type: ignore[attr-defined]
    with runtime.session_factory() as session:
        model = session.get(Model, model_id)
        assert model is not None
        version = ModelVersion(
            model_id=model_id, number=1, backbone="efficientnet_lite2",
            head="multilabel_logistic", labels=[c.name for c in model.categories],
            metrics=metrics, params={"l2": 0.01, "views": 1, "metrics_note": None,
                                     "candidates": [], "unknown_threshold": None},
            image_ids=list(range(30)), artifact_path="missing.pt", train_seconds=4.5)
        session.add(version)
        session.flush()
        model.active_version_id = version.id
        model.state = "ready"
        session.commit()


def test_a_multi_label_version_shows_its_table_and_hides_what_it_refuses(
        web: TestClient, monkeypatch: pytest.MonkeyPatch) -> None:
    model_id = create(web)
    inject_version(web, model_id, multi_label_metrics())
    page = web.get(f"/web/models/{model_id}")
    assert page.status_code == 200, page.text
    text = page.text
    stats = dict((label, value) for value, label in re.findall(
        r'<span class="stat-value">([^<]+)</span><span class="stat-label">([^<]+)</span>', text))
    assert stats["micro-F1"] == "88.3%" and stats["macro-F1"] == "87.3%"
    assert stats["mean average precision"] == "89.0%" and stats["exact match"] == "70.0%"
    table = re.search(r'<table class="per-class per-category">(.*?)</table>', text, re.DOTALL)
    assert table is not None
    rows = re.findall(r'<tr data-category="([^"]+)"><th scope="row">[^<]+</th>((?:<td[^>]*>'
                      r'[^<]*</td>)+)</tr>', table.group(1))
    cells = {name: re.findall(r"<td[^>]*>([^<]*)</td>", row) for name, row in rows}
    assert cells == {"insect": ["95.0%", "90.0%", "92.4%", "97.0%", "41.0%", "20"],
                     "ant": ["80.0%", "70.0%", "74.7%", "81.0%", "55.0%", "10"],
                     "flower": ["100.0%", "90.0%", "94.7%", "–", "37.5%", "10"]}
    assert "Threshold" in table.group(1) and "Average precision" in table.group(1)
    assert "EfficientNet-Lite2 + one-vs-rest logistic regression" in text
    assert "accuracy</span>" not in text  # no single-label stats beside it
    # What multi-label models answer with 409 not_for_multi_label is not offered at all.
    assert f"/web/models/{model_id}/review" not in text
    assert 'name="reject_unknown"' not in text
    assert "CV micro-F1" in text and '<td class="num">88.3%</td>' in text  # versions table
    assert "Micro-F1 88.3%" in web.get("/web/models").text

    def no_suggestions(*args: Any, **kwargs: Any) -> Any:
        raise AssertionError("a multi-label pool must not ask for suggestions")

    monkeypatch.setattr(web_routes, "suggest", no_suggestions)
    web.post(f"/web/models/{model_id}/images", files=files_of(photos("hemlock")[0]))
    pool = web.get(f"/web/models/{model_id}/pool")
    assert pool.status_code == 200 and "not_for_multi_label" not in pool.text
    assert "No suggestions" not in pool.text and ">Review</a>" not in pool.text
    gallery = web.get(f"/web/models/{model_id}/images")
    assert gallery.status_code == 200 and ">Review</a>" not in gallery.text


def test_a_multi_label_prediction_lists_the_categories_above_their_thresholds(
        web: TestClient, monkeypatch: pytest.MonkeyPatch) -> None:
    model_id = create(web)
    inject_version(web, model_id, multi_label_metrics())

    def fake_predict(session, runtime, *, account, model_id, uploads,  # type: ignore[no-untyped-def]
                     reject_unknown=False):
        assert not reject_unknown
        predictions = [("insect", 0.93, 0.41), ("ant", 0.61, 0.55), ("flower", 0.08, 0.375)]
        return 1, [{"file": uploads[0].filename, "status": "ok", "label": "insect",
                    "probability": 0.93, "labels": ["insect", "ant"],
                    "predictions": [{"label": name, "probability": p, "selected": p >= t,
                                     "threshold": t} for name, p, t in predictions]},
                   {"file": "empty.jpg", "status": "ok", "label": None, "probability": None,
                    "labels": [], "predictions": [{"label": "insect", "probability": 0.1,
                                                   "selected": False, "threshold": 0.41}]}]

    monkeypatch.setattr(web_routes, "predict", fake_predict)
    page = web.post(f"/web/models/{model_id}/predict", files=files_of(photos("hemlock")[0]))
    assert page.status_code == 200, page.text
    block = re.search(r'<ul class="predictions">(.*?)</ul>', page.text, re.DOTALL)
    assert block is not None
    assert "→ <strong>insect, ant</strong>" in block.group(1)
    assert "no category at or above its threshold" in block.group(1)
    assert "yes, threshold 41.0%" in block.group(1) and "no, threshold 37.5%" in block.group(1)
    assert block.group(1).count("bar bar-top") == 2  # the two categories it says yes to


@pytest.fixture
def url_web(tmp_path: Path) -> Iterator[tuple[TestClient, UrlServer]]:
    settings = settings_for(tmp_path, url_allow_private=True)  # the URL server is on loopback
    with UrlServer(DATASETS) as server, TestClient(create_app(settings)) as client:
        yield sign_in(client, KEY), server


def test_images_by_url_show_each_urls_result(url_web: tuple[TestClient, UrlServer]) -> None:
    web, server = url_web
    model_id = create(web, kind="single_label", categories=("hemlock", "japanese_cherry"))
    form = web.get(f"/web/models/{model_id}").text
    assert f'action="/web/models/{model_id}/images/urls#by-url"' in form
    assert '<textarea id="urls" name="urls"' in form

    first, second = (server.file_url(path) for path in photos("hemlock")[:2])
    missing = server.url("/status/404")
    page = web.post(f"/web/models/{model_id}/images/urls",
                    data={"urls": f"{first}\n\n  {second}  \n{missing}\n",
                          "category": "hemlock"})
    assert page.status_code == 200, page.text
    block = results_block(page.text, "results url-results")
    assert "2 of 3 URLs added." in block
    assert block.count('class="result result-accepted"') == 2
    rejected = re.search(r'<li class="result result-rejected">(.*?)</li>', block, re.DOTALL)
    assert rejected is not None and missing in rejected.group(1)
    assert "404" in rejected.group(1)
    counts = {c["name"]: c["count"] for c in api_model(web, model_id)["categories"]}
    assert counts == {"hemlock": 2, "japanese_cherry": 0}
    assert '<span data-count>2</span>' in page.text  # the hemlock zone counts them

    again = web.post(f"/web/models/{model_id}/images/urls",
                     data={"urls": f"{first}\n{missing}", "category": "hemlock"})
    assert again.status_code == 200
    block = results_block(again.text, "results url-results")
    assert "0 of 2 URLs added." in block and "already in this category" in block

    refused = web.post(f"/web/models/{model_id}/images/urls",
                       data={"urls": missing, "category": "hemlock"})
    assert refused.status_code >= 400
    assert missing in results_block(refused.text, "results url-results")
    assert f">{missing}</textarea>" in refused.text  # kept, to fix and send again
    empty = web.post(f"/web/models/{model_id}/images/urls", data={"urls": "  \n"})
    assert empty.status_code == 400 and "Enter at least one image URL" in empty.text
    many = web.post(f"/web/models/{model_id}/images/urls",
                    data={"urls": "\n".join([first] * 101), "category": "hemlock"})
    assert many.status_code == 400 and "at most 100 URLs" in many.text
    assert server.paths().count(urlsplit(first).path) == 2  # the two imports above, no more

    multi = create(web)
    pooled = web.post(f"/web/models/{multi}/images/urls", data={"urls": first, "category": ""})
    assert pooled.status_code == 200
    assert "not labelled" in results_block(pooled.text, "results url-results")
    labelled = web.post(f"/web/models/{multi}/images/urls",
                        data={"urls": second, "category": "flower"})
    assert "labelled flower" in results_block(labelled.text, "results url-results")
    assert shown_counts(labelled.text) == {"insect": 0, "ant": 0, "flower": 1, "": 1}


def test_private_addresses_are_refused_on_the_page_by_default(tmp_path: Path) -> None:
    with UrlServer(DATASETS) as server, \
            TestClient(create_app(settings_for(tmp_path))) as client:
        web = sign_in(client, KEY)
        model_id = create(web)
        url = server.file_url(photos("hemlock")[0])
        page = web.post(f"/web/models/{model_id}/images/urls", data={"urls": url})
        assert page.status_code >= 400
        block = results_block(page.text, "results url-results")
        assert "rejected" in block and url in block
        assert server.asked == []  # refused before any connection
        assert api_model(web, model_id)["unlabelled"] == 0
