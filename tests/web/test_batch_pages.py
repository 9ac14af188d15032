"""The batch pages of the web form, driven like a browser with JavaScript off: the model page's
"Classify many" forms, the batch's page, its CSV; one trained model shared by the module."""

from __future__ import annotations

import csv
import io
import re
from collections.abc import Iterator
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from app.jobs.handlers import run_job
from app.main import create_app
from app.services.accounts import create_account
from app.web import batches as web_batches
from app.web.templating import percent
from tests.api.test_batch_predictions import held_jobs, runtime_of
from tests.conftest import (
    API_KEY,
    BAD_INPUTS,
    OTHER_KEY,
    TREES,
    bearer,
    create_model,
    make_settings,
    tree_photos,
    upload,
    wait_for_job,
)
from tests.web.forms import sign_in

pytestmark = pytest.mark.slow

LABELS = ("hemlock", "japanese_cherry")
# Trained on the first 7 photos of each tree; the batches label the other photos.
NEW_PHOTOS = [*tree_photos("hemlock")[7:], *tree_photos("japanese_cherry")[7:],
              TREES / "test" / "hemlock" / "test_image.jpg"]
NOT_AN_IMAGE = BAD_INPUTS / "not_an_image.jpg"
BOUNDARY = "batch-test-boundary"
# What a browser sends for a file input left empty: one part with an empty filename.
EMPTY_FILE_INPUT = (
    f"--{BOUNDARY}\r\nContent-Disposition: form-data; name=\"files\"; filename=\"\"\r\n"
    f"Content-Type: application/octet-stream\r\n\r\n\r\n--{BOUNDARY}--\r\n").encode()


class ResultRows(HTMLParser):
    """The text of each cell of the page's results table, a list per row."""

    def __init__(self) -> None:
        super().__init__()
        self.rows: list[list[str]] = []
        self._in_table = False
        self._cell: list[str] | None = None

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag == "table" and ("class", "batch-results") in attrs:
            self._in_table = True
        elif self._in_table and tag == "tr":
            self.rows.append([])
        elif self._in_table and tag == "td":
            self._cell = []

    def handle_endtag(self, tag: str) -> None:
        if tag == "table":
            self._in_table = False
        elif tag == "td" and self._cell is not None:
            self.rows[-1].append("".join(self._cell).strip())
            self._cell = None

    def handle_data(self, data: str) -> None:
        if self._cell is not None:
            self._cell.append(data)


def result_rows(page: str) -> list[list[str]]:
    """[number, file, label, probability, error] per result shown (header row left out)."""
    parser = ResultRows()
    parser.feed(page)
    return [row for row in parser.rows if row]


def files_of(*paths: Path) -> list[tuple[str, tuple[str, bytes, str]]]:
    return [("files", (path.name, path.read_bytes(), "image/jpeg")) for path in paths]


@pytest.fixture(scope="module")
def web(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TestClient]:
    """A browser signed in to the web form (requests with a bearer header set up data)."""
    settings = make_settings(tmp_path_factory.mktemp("web-batches") / "data")
    with TestClient(create_app(settings)) as client:
        with runtime_of(client).session_factory() as session:
            create_account(session, name="other", key=OTHER_KEY)
        yield sign_in(client, API_KEY)


@pytest.fixture(scope="module")
def trees(web: TestClient) -> str:
    model_id = create_model(web)
    for label in LABELS:
        assert upload(web, model_id, label, tree_photos(label)[:7]).status_code == 200
    job_id = web.post(f"/api/v1/models/{model_id}/train", headers=bearer()).json()["job_id"]
    assert wait_for_job(web, job_id)["status"] == "succeeded"
    return model_id


def send(client: TestClient, model_id: str, paths: list[Path]) -> str:
    """Send files with the "Classify these files" form; return the batch id it redirects to."""
    response = client.post(f"/web/models/{model_id}/batches", files=files_of(*paths),
                           follow_redirects=False)
    assert response.status_code == 303, response.text
    match = re.fullmatch(rf"/web/models/{model_id}/batches/(\w+)", response.headers["location"])
    assert match is not None, response.headers["location"]
    return match.group(1)


def api_results(client: TestClient, model_id: str, batch_id: str) -> list[dict[str, Any]]:
    body = client.get(f"/api/v1/models/{model_id}/batch-predictions/{batch_id}?per_page=1000",
                      headers=bearer()).json()
    assert body["status"] == "succeeded", body
    results: list[dict[str, Any]] = body["results"]
    return results


def test_dropped_files_are_labelled_listed_and_downloaded(web: TestClient, trees: str) -> None:
    model_page = web.get(f"/web/models/{trees}")
    assert 'id="batches"' in model_page.text and "Classify many" in model_page.text
    assert f'action="/web/models/{trees}/batches"' in model_page.text
    assert "Classify these files" in model_page.text

    paths = [*NEW_PHOTOS, NOT_AN_IMAGE]
    batch_id = send(web, trees, paths)
    page = web.get(f"/web/models/{trees}/batches/{batch_id}")
    assert page.status_code == 200 and page.headers["cache-control"] == "no-store"
    assert f'data-job-url="/web/json/jobs/{batch_id}"' in page.text  # app.js follows the job
    assert 'role="progressbar"' in page.text
    assert f"Batch of {len(paths)} images" in page.text
    # Refused now: listed with its reason, whether the job has finished yet or not.
    assert NOT_AN_IMAGE.name in page.text and "not a recognisable image" in page.text

    assert wait_for_job(web, batch_id)["status"] == "succeeded"
    done = web.get(f"/web/models/{trees}/batches/{batch_id}")
    assert 'data-active="false"' in done.text and "Refused when sent" not in done.text
    expected = api_results(web, trees, batch_id)
    rows = result_rows(done.text)
    assert [row[:2] for row in rows] == [[str(n), path.name] for n, path in
                                         enumerate(paths, start=1)]
    for row, result in zip(rows, expected, strict=True):
        if result["status"] == "ok":
            assert row[2] in LABELS and row[2] == result["label"]
            assert row[3] == percent(result["probability"]) and row[4] == ""
        else:
            assert row[2:4] == ["", ""] and row[4] == result["error"]["message"]
    assert [row[4] != "" for row in rows] == [path == NOT_AN_IMAGE for path in paths]
    assert f"{len(NEW_PHOTOS)} of {len(paths)} labelled" in done.text and "1 refused" in done.text

    csv_url = f"/web/models/{trees}/batches/{batch_id}/results.csv"
    assert f'href="{csv_url}" download>Download CSV</a>' in done.text
    download = web.get(csv_url)
    assert download.status_code == 200
    assert download.headers["content-type"].startswith("text/csv")
    assert download.headers["content-disposition"] == (
        f'attachment; filename="batch-{batch_id}.csv"')
    api_csv = web.get(f"/api/v1/models/{trees}/batch-predictions/{batch_id}/results.csv",
                      headers=bearer())
    assert download.content == api_csv.content
    reader = csv.DictReader(io.StringIO(download.text))
    assert reader.fieldnames == ["file", "image_id", "label", "probability", *LABELS, "error"]
    table = list(reader)
    assert [row["file"] for row in table] == [path.name for path in paths]
    for row, result in zip(table, expected, strict=True):
        if result["status"] == "ok":
            assert (row["label"], row["probability"], row["error"]) == (
                result["label"], format(result["probability"], ".6f"), "")
            assert {label: row[label] for label in LABELS} == {
                p["label"]: format(p["probability"], ".6f") for p in result["predictions"]}
        else:
            assert (row["label"], row["error"]) == ("", result["error"]["code"])


def test_the_model_page_lists_recent_batches(web: TestClient, trees: str) -> None:
    batch_id = send(web, trees, NEW_PHOTOS[:2])
    assert wait_for_job(web, batch_id)["status"] == "succeeded"
    page = web.get(f"/web/models/{trees}").text
    assert "Recent batches" in page
    row = re.search(rf'<tr data-batch="{batch_id}">(.*?)</tr>', page, re.S)
    assert row is not None, "the new batch should be listed on the model page"
    assert "succeeded" in row.group(1) and '<td class="num">2</td>' in row.group(1)
    assert f'href="/web/models/{trees}/batches/{batch_id}"' in row.group(1)
    assert f'href="/web/models/{trees}/batches/{batch_id}/results.csv"' in row.group(1)


def test_results_come_a_page_at_a_time(web: TestClient, trees: str,
                                       monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(web_batches, "RESULTS_PER_PAGE", 2)
    paths = NEW_PHOTOS[:5]
    batch_id = send(web, trees, paths)
    assert wait_for_job(web, batch_id)["status"] == "succeeded"
    url = f"/web/models/{trees}/batches/{batch_id}"
    first = web.get(url).text
    assert [row[1] for row in result_rows(first)] == [path.name for path in paths[:2]]
    assert f'href="{url}?page=3#results"' in first and "Results 1–2 of 5" in first
    last = web.get(f"{url}?page=3").text
    assert [row[:2] for row in result_rows(last)] == [["5", paths[4].name]]
    assert "No results on this page." in web.get(f"{url}?page=9").text
    assert len(list(csv.DictReader(io.StringIO(web.get(f"{url}/results.csv").text)))) == 5


def test_a_batch_of_the_unlabelled_pool(web: TestClient, trees: str) -> None:
    assert "Classify the unlabelled pool" not in web.get(f"/web/models/{trees}").text
    empty = web.post(f"/web/models/{trees}/batches", data={"pool": "1"})
    assert empty.status_code == 422 and "The unlabelled pool of this model is empty." in empty.text

    pooled = web.post(f"/web/models/{trees}/images", data={"category": ""},
                      files=files_of(*NEW_PHOTOS[:2]))
    assert pooled.status_code == 200
    assert "Classify the unlabelled pool (2 images)" in pooled.text
    response = web.post(f"/web/models/{trees}/batches", data={"pool": "1"},
                        follow_redirects=False)
    assert response.status_code == 303
    batch_id = response.headers["location"].rsplit("/", 1)[1]
    assert wait_for_job(web, batch_id)["status"] == "succeeded"
    page = web.get(response.headers["location"]).text
    expected = api_results(web, trees, batch_id)
    ids = [result["image_id"] for result in expected]
    assert len(ids) == 2 and all(isinstance(image_id, int) for image_id in ids)
    for image_id in ids:
        assert f'src="/web/models/{trees}/images/{image_id}/thumbnail"' in page
    assert [row[1:3] for row in result_rows(page)] == [
        [result["file"], result["label"]] for result in expected]
    table = list(csv.DictReader(io.StringIO(web.get(f"{response.headers['location']}"
                                                    "/results.csv").text)))
    assert [int(row["image_id"]) for row in table] == ids
    for image_id in ids:  # the pool stays as it was
        assert web.delete(f"/api/v1/models/{trees}/images/{image_id}",
                          headers=bearer()).status_code == 204


def test_refusals_are_shown_in_the_batch_section(web: TestClient, trees: str) -> None:
    for nothing in (
        web.post(f"/web/models/{trees}/batches", content=EMPTY_FILE_INPUT,
                 headers={"Content-Type": f"multipart/form-data; boundary={BOUNDARY}"}),
        web.post(f"/web/models/{trees}/batches"),
    ):
        assert nothing.status_code == 400
        assert nothing.headers["content-type"].startswith("text/html")
        assert 'id="batches"' in nothing.text
        assert "Choose at least one image file first." in nothing.text

    only_bad = web.post(f"/web/models/{trees}/batches", files=files_of(NOT_AN_IMAGE))
    assert only_bad.status_code == 415
    assert re.search(r'result-rejected"><span class="file">not_an_image.jpg', only_bad.text)

    untrained = create_model(web, name="saplings")
    assert "Classify many" not in web.get(f"/web/models/{untrained}").text
    refused = web.post(f"/web/models/{untrained}/batches", files=files_of(NEW_PHOTOS[0]))
    assert refused.status_code == 409
    assert "This model has no trained version yet; train it first." in refused.text
    assert 'id="batches"' in refused.text and "Classify these files" not in refused.text
    listed = web.get(f"/api/v1/models/{untrained}/batch-predictions", headers=bearer())
    assert listed.json()["total"] == 0


def test_a_queued_batch_shows_its_job_and_refusals_and_no_csv_yet(web: TestClient,
                                                                  trees: str) -> None:
    with held_jobs(web):
        batch_id = send(web, trees, [NEW_PHOTOS[0], NOT_AN_IMAGE])
    url = f"/web/models/{trees}/batches/{batch_id}"
    page = web.get(url).text
    assert 'data-active="true"' in page and f'data-finished-url="{url}"' in page
    assert "data-job-status>queued<" in page and 'id="results"' not in page
    refused = re.search(r'<ul class="results refused">(.*?)</ul>', page, re.S)
    assert refused is not None and NOT_AN_IMAGE.name in refused.group(1)
    assert "not a recognisable image" in refused.group(1)
    early = web.get(f"{url}/results.csv")
    assert early.status_code == 409
    assert early.headers["content-type"].startswith("text/html")
    assert "This batch is queued (0% done)" in early.text

    run_job(runtime_of(web), batch_id)
    assert [row[1] for row in result_rows(web.get(url).text)] == [NEW_PHOTOS[0].name,
                                                                   NOT_AN_IMAGE.name]


def test_another_account_and_a_stranger_get_no_batch(web: TestClient, trees: str) -> None:
    with held_jobs(web):
        batch_id = send(web, trees, NEW_PHOTOS[:1])
    url = f"/web/models/{trees}/batches/{batch_id}"
    theirs = create_model(web, name="their garden", key=OTHER_KEY)
    other = sign_in(TestClient(web.app), OTHER_KEY)
    attempts = [
        other.get(url), other.get(f"{url}/results.csv"),
        other.get(f"/web/models/{theirs}/batches/{batch_id}"),
        other.get(f"/web/models/{theirs}/batches/{batch_id}/results.csv"),
        other.post(f"/web/models/{trees}/batches", files=files_of(NEW_PHOTOS[0])),
        other.post(f"/web/models/{trees}/batches", data={"pool": "1"}),
        web.get(f"/web/models/{trees}/batches/0123456789abcdef"),
    ]
    for response in attempts:
        assert response.status_code == 404, response.text
        assert response.headers["content-type"].startswith("text/html")
        assert "hemlock" not in response.text and NEW_PHOTOS[0].name not in response.text
    stranger = TestClient(web.app)
    for path in (url, f"{url}/results.csv"):
        response = stranger.get(path, follow_redirects=False)
        assert response.status_code == 303 and response.headers["location"] == "/web/sign-in"
    assert web.get(url).status_code == 200
