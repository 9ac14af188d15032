"""POST /api/v1/models/{id}/images/urls and /predict/urls: images fetched from a real HTTP server
on loopback (tests.url_server) through the outbound guard, then the upload's own decode path.

By default loopback, private, link-local and metadata addresses are refused, directly, through a
name that resolves to one, or through a redirect. Refusing a redirect takes a first hop that
passes the guard, which no server on this machine can be (they are all on loopback), so
`fake_network` puts a DNS and a route in place of the ones a test cannot set up:
`public.example` resolves to a public address, and connections to that address are carried to
the test server (what a router would do). The guard sees a public address, the test server
answers the first hop, and its redirect to a private address is judged by the guard again.
Everything else runs with NANONET_URL_ALLOW_PRIVATE on, as a test or closed network would.
"""

from __future__ import annotations

import itertools
import socket
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest
from fastapi.testclient import TestClient

from app.config import MiB, Settings
from app.main import create_app
from app.schemas import url_images as url_schemas
from app.services import outbound
from tests.conftest import (
    DATASETS,
    TREES,
    bearer,
    create_model,
    files_of,
    make_settings,
    tree_photos,
)
from tests.url_server import Asked, UrlServer

HYMENOPTERA = DATASETS / "hymenoptera"
ANTS = sorted((HYMENOPTERA / "train" / "ants").glob("*.jpg"))
BEES = sorted((HYMENOPTERA / "train" / "bees").glob("*.jpg"))
PUBLIC_ADDRESS = "93.184.215.14"  # a public address, routed to the test server by fake_network
FAKE_NAMES = {"public.example": PUBLIC_ADDRESS, "loopback.example": "127.0.0.1",
              "private.example": "10.0.0.7"}

OpenClient = Callable[..., TestClient]


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    """conftest's, able to fetch from the test server (`client` and `trained_trees` use it)."""
    return make_settings(tmp_path / "data", url_allow_private=True, extract_on_upload=False)


@pytest.fixture
def open_client(tmp_path: Path) -> Iterator[OpenClient]:
    """Start an app with these settings (default: the guard's defaults, private refused)."""
    numbers = itertools.count()
    with ExitStack() as stack:
        def start(**overrides: Any) -> TestClient:
            data = tmp_path / f"data-{next(numbers)}"
            settings = make_settings(data, extract_on_upload=False, **overrides)
            return stack.enter_context(TestClient(create_app(settings)))

        yield start


@pytest.fixture
def server() -> Iterator[UrlServer]:
    with UrlServer(DATASETS) as running:
        yield running


@pytest.fixture
def fake_network(monkeypatch: pytest.MonkeyPatch) -> list[tuple[str, int]]:
    """FAKE_NAMES resolve as listed; a connection to PUBLIC_ADDRESS reaches loopback on the
    same port. Returns the addresses connected to, as the fetch asked for them."""
    real_lookup, real_connect = socket.getaddrinfo, socket.create_connection
    connected: list[tuple[str, int]] = []

    def lookup(host: str, port: int, *args: Any, **kwargs: Any) -> Any:
        if host in FAKE_NAMES:
            return [(socket.AF_INET, socket.SOCK_STREAM, 6, "", (FAKE_NAMES[host], port))]
        return real_lookup(host, port, *args, **kwargs)

    def connect(address: tuple[str, int], *args: Any, **kwargs: Any) -> socket.socket:
        connected.append(address)
        if address[0] == PUBLIC_ADDRESS:
            address = ("127.0.0.1", address[1])
        return real_connect(address, *args, **kwargs)

    monkeypatch.setattr(outbound.socket, "getaddrinfo", lookup)
    monkeypatch.setattr(outbound.socket, "create_connection", connect)
    return connected


def insects(client: TestClient) -> str:
    return create_model(client, "insects", ("ants", "bees"))


def upload_urls(client: TestClient, model_id: str, urls: list[str],
                category: str | None = "ants"):  # type: ignore[no-untyped-def]
    return client.post(f"/api/v1/models/{model_id}/images/urls",
                       json={"urls": urls, "category": category}, headers=bearer())


def codes(results: list[dict[str, Any]]) -> list[str]:
    return [r["error"]["code"] if r["status"] == "rejected" else r["status"] for r in results]


def counts(client: TestClient, model_id: str) -> dict[str, int]:
    model = client.get(f"/api/v1/models/{model_id}", headers=bearer()).json()
    return {c["name"]: c["count"] for c in model["categories"]}


# --- the guard, with its default settings ---------------------------------------------------

def test_private_addresses_are_refused_by_default(open_client: OpenClient,
                                                  server: UrlServer) -> None:
    client = open_client()
    model_id = insects(client)
    urls = [server.file_url(ANTS[0]), server.file_url(ANTS[0], host="localhost"),
            server.file_url(ANTS[0], host="[::ffff:127.0.0.1]"), "http://10.0.0.8/ant.jpg",
            "http://192.168.1.20/ant.jpg", "http://169.254.169.254/latest/meta-data/",
            "http://[fe80::1]/ant.jpg", "http://[fd00:ec2::254]/latest/meta-data/"]
    response = upload_urls(client, model_id, urls)
    assert response.status_code == 422, response.text
    error = response.json()["error"]
    assert error["code"] == "url_not_allowed"
    results = error["details"]["results"]
    assert [r["file"] for r in results] == urls
    assert codes(results) == ["url_not_allowed"] * len(urls)
    assert all("NANONET_URL_ALLOW_PRIVATE" in r["error"]["message"] for r in results)
    assert "metadata" in results[5]["error"]["message"]
    assert server.asked == []  # nothing was even asked
    assert counts(client, model_id) == {"ants": 0, "bees": 0}


def test_a_name_that_resolves_to_loopback_is_refused_before_connecting(
        open_client: OpenClient, server: UrlServer,
        fake_network: list[tuple[str, int]]) -> None:
    client = open_client()
    model_id = insects(client)
    for name, address in (("loopback.example", "127.0.0.1"), ("private.example", "10.0.0.7")):
        response = upload_urls(client, model_id, [server.file_url(ANTS[0], host=name)])
        assert response.status_code == 422, response.text
        error = response.json()["error"]
        assert error["code"] == "url_not_allowed"
        assert f"resolves to {address}" in error["message"]
    assert fake_network == [] and server.asked == []


@pytest.mark.parametrize("private", [
    "http://127.0.0.1:{port}/files/{photo}",
    "http://localhost:{port}/files/{photo}",
    "http://loopback.example:{port}/files/{photo}",
    "http://169.254.169.254/latest/meta-data/",
    "http://private.example/ant.jpg",
    "file:///etc/passwd",
])
def test_a_public_url_that_redirects_to_a_private_one_is_refused(
        open_client: OpenClient, server: UrlServer, fake_network: list[tuple[str, int]],
        private: str) -> None:
    client = open_client()
    model_id = insects(client)
    photo = quote(ANTS[0].relative_to(DATASETS).as_posix())
    first = server.url(f"/to?url={quote(private.format(port=server.port, photo=photo), safe='')}",
                       host="public.example")
    response = upload_urls(client, model_id, [first])
    assert response.status_code == 422, response.text
    error = response.json()["error"]
    assert error["code"] == "url_not_allowed"
    assert error["message"].startswith("The URL redirects to ")
    # The first hop went to the public address the guard checked, with the name as its Host;
    # the redirect's target was never asked.
    assert fake_network == [(PUBLIC_ADDRESS, server.port)]
    assert server.asked == [Asked(first.split(str(server.port), 1)[1],
                                  f"public.example:{server.port}")]


def test_a_public_url_that_redirects_to_a_public_one_is_followed(
        open_client: OpenClient, server: UrlServer, fake_network: list[tuple[str, int]]) -> None:
    """The control of the test above: the same fake network, nothing private, fetched."""
    client = open_client()
    model_id = insects(client)
    url = server.url("/redirect/2/" + server.file_url(ANTS[0]).split("/", 3)[3],
                     host="public.example")
    response = upload_urls(client, model_id, [url])
    assert response.status_code == 200, response.text
    assert codes(response.json()["results"]) == ["accepted"]
    assert fake_network == [(PUBLIC_ADDRESS, server.port)] * 3


# --- fetching, with private addresses allowed -----------------------------------------------

def test_uploads_by_url_are_stored_as_uploaded_files_are(client: TestClient,
                                                         server: UrlServer) -> None:
    model_id = insects(client)
    urls = [server.file_url(path) for path in ANTS[:3]]
    response = upload_urls(client, model_id, urls)
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["category"] == "ants" and body["accepted"] == 3
    assert [r["file"] for r in body["results"]] == urls
    assert codes(body["results"]) == ["accepted"] * 3
    assert all(r["width"] and r["height"] and r["sha256"] for r in body["results"])
    assert counts(client, model_id) == {"ants": 3, "bees": 0}
    images = client.get(f"/api/v1/models/{model_id}/images", headers=bearer()).json()["items"]
    assert [image["file_name"] for image in images] == [path.name for path in ANTS[:3]]
    original = client.get(f"/api/v1/models/{model_id}/images/{images[0]['id']}/original",
                          headers=bearer())
    assert original.content == ANTS[0].read_bytes()
    # The same bytes by URL or by file are one image; without a category they go to the pool.
    again = upload_urls(client, model_id, [urls[0]]).json()["results"]
    assert codes(again) == ["duplicate"] and again[0]["image_id"] == images[0]["id"]
    by_file = client.post(f"/api/v1/models/{model_id}/images", data={"category": "ants"},
                          files=files_of(ANTS[1]), headers=bearer()).json()["results"]
    assert codes(by_file) == ["duplicate"]
    pooled = upload_urls(client, model_id, [server.file_url(BEES[0])], category=None).json()
    assert pooled["category"] is None and codes(pooled["results"]) == ["accepted"]


def test_redirects_are_followed_up_to_the_limit(client: TestClient, server: UrlServer) -> None:
    model_id = insects(client)
    path = server.file_url(ANTS[0]).split("/", 3)[3]
    within, beyond = server.url(f"/redirect/3/{path}"), server.url(f"/redirect/4/{path}")
    response = upload_urls(client, model_id, [within, beyond])
    assert response.status_code == 200, response.text
    accepted, refused = response.json()["results"]
    assert accepted["status"] == "accepted" and accepted["file"] == within
    assert refused["error"]["code"] == "too_many_redirects"
    assert refused["error"]["http_status"] == 422
    assert "NANONET_URL_MAX_REDIRECTS" in refused["error"]["message"]
    # Three redirects and the file for the first, four redirects and no more for the second.
    assert sorted(server.paths()).count(f"/{path}") == 1
    assert len(server.asked) == 4 + 4


def test_a_body_past_the_cap_is_refused_without_reading_it(open_client: OpenClient,
                                                          server: UrlServer) -> None:
    client = open_client(url_allow_private=True, max_file_bytes=1 * MiB)
    model_id = insects(client)
    started = time.monotonic()
    response = upload_urls(client, model_id, [server.url("/endless")])
    assert response.status_code == 413, response.text
    error = response.json()["error"]
    assert error["code"] == "file_too_large" and "NANONET_MAX_FILE_BYTES" in error["message"]
    # The server's writes fail once the fetch hangs up: what it got out is the cap plus what
    # the sockets' buffers held, never the (endless) rest.
    assert server.streaming_done.wait(10)
    assert server.sent < 64 * MiB
    assert time.monotonic() - started < 10
    server.streaming_done.clear()
    declared = upload_urls(client, model_id, [server.url(f"/declared/{50 * MiB}")])
    assert declared.status_code == 413
    assert "50.0 MB (its Content-Length)" in declared.json()["error"]["message"]
    assert server.streaming_done.wait(10) and server.sent < 50 * MiB


def test_a_slow_server_is_reported_as_a_timeout(open_client: OpenClient,
                                                server: UrlServer) -> None:
    client = open_client(url_allow_private=True, url_fetch_timeout=1)
    model_id = insects(client)
    good = server.file_url(ANTS[0])
    started = time.monotonic()
    response = upload_urls(client, model_id, [server.url("/stall"),
                                              server.url(f"/slow/30/{good.split('/', 3)[3]}"),
                                              good])
    assert time.monotonic() - started < 6
    assert response.status_code == 200, response.text
    stalled, silent, kept = response.json()["results"]
    for result in (stalled, silent):
        assert result["error"]["code"] == "fetch_timeout"
        assert result["error"]["http_status"] == 422
        assert "NANONET_URL_FETCH_TIMEOUT" in result["error"]["message"]
    assert "did not arrive in full within 1 s" in stalled["error"]["message"]
    assert "no answer within 1 s" in silent["error"]["message"]
    assert kept["status"] == "accepted"


def test_a_mixed_batch_keeps_the_good_ones(client: TestClient, server: UrlServer) -> None:
    model_id = insects(client)
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        closed_port = sock.getsockname()[1]
    path = server.file_url(ANTS[1]).split("/", 3)[3]
    urls = [server.file_url(ANTS[0]), server.url("/page"), server.url("/status/404"),
            server.url("/status/503"), f"http://127.0.0.1:{closed_port}/ant.jpg",
            "ftp://127.0.0.1/ant.jpg", "http://no-such-host.invalid/ant.jpg",
            server.url(f"/redirect/9/{path}"), server.file_url(ANTS[1]), server.url("/files/")]
    response = upload_urls(client, model_id, urls)
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["accepted"] == 2
    assert [r["file"] for r in body["results"]] == urls
    assert codes(body["results"]) == [
        "accepted", "not_an_image", "url_http_error", "url_http_error", "fetch_failed",
        "url_not_allowed", "url_unresolvable", "too_many_redirects", "accepted",
        "url_http_error"]
    errors = [r["error"] for r in body["results"] if r["status"] == "rejected"]
    assert [e["http_status"] for e in errors] == [415] + [422] * 7
    assert "HTTP 404" in errors[1]["message"] and "check the URL" in errors[1]["message"]
    assert "connection refused" in errors[3]["message"]
    assert counts(client, model_id) == {"ants": 2, "bees": 0}
    # Every URL failing, the fetched one at decoding and the others before: one 4xx naming all.
    nothing = upload_urls(client, model_id, urls[1:8])
    assert nothing.status_code == 422, nothing.text
    error = nothing.json()["error"]
    assert error["code"] == "no_acceptable_file"
    assert codes(error["details"]["results"]) == codes(body["results"])[1:8]
    assert counts(client, model_id) == {"ants": 2, "bees": 0}


def test_the_urls_of_a_request_are_fetched_at_once(client: TestClient,
                                                   server: UrlServer) -> None:
    model_id = insects(client)
    urls = [server.url(f"/slow/1.5/{server.file_url(path).split('/', 3)[3]}")
            for path in ANTS[:4]]
    started = time.monotonic()
    response = upload_urls(client, model_id, urls)
    elapsed = time.monotonic() - started
    assert response.status_code == 200 and response.json()["accepted"] == 4
    assert [r["file"] for r in response.json()["results"]] == urls  # in the order given
    assert elapsed < 4.5, elapsed  # one after the other: 6 s


def test_what_is_refused_before_any_fetch(client: TestClient, server: UrlServer) -> None:
    model_id = insects(client)
    good = server.file_url(ANTS[0])
    malformed: list[dict[str, Any]] = [
        {"urls": []}, {"urls": [good] * 101}, {"urls": ["http://a.example/" + "x" * 2000]},
        {"urls": good}, {}]
    for body in malformed:
        response = client.post(f"/api/v1/models/{model_id}/images/urls", json=body,
                               headers=bearer())
        assert response.status_code == 422, (body, response.text)
    assert url_schemas.MAX_URL_LENGTH == outbound.MAX_URL_LENGTH
    unknown = upload_urls(client, model_id, [good], category="wasps")
    assert unknown.status_code == 422 and unknown.json()["error"]["code"] == "unknown_category"
    missing = upload_urls(client, "no-such-model", [good])
    assert missing.status_code == 404
    untrained = client.post(f"/api/v1/models/{model_id}/predict/urls", json={"urls": [good]},
                            headers=bearer())
    assert untrained.status_code == 409, untrained.text
    assert untrained.json()["error"]["code"] == "model_not_trained"
    no_key = client.post(f"/api/v1/models/{model_id}/images/urls", json={"urls": [good]})
    assert no_key.status_code == 401
    assert server.asked == []


@pytest.mark.slow
def test_predict_by_url_answers_as_predict_by_file(client: TestClient, trained_trees: str,
                                                   server: UrlServer) -> None:
    photos = [TREES / "test" / "hemlock" / "test_image.jpg",
              *tree_photos("japanese_cherry")[:1]]
    by_file = client.post(f"/api/v1/models/{trained_trees}/predict", files=files_of(*photos),
                          headers=bearer())
    assert by_file.status_code == 200, by_file.text
    urls = [server.file_url(photos[0]), server.url("/status/404"), server.file_url(photos[1])]
    by_url = client.post(f"/api/v1/models/{trained_trees}/predict/urls?version=1",
                         json={"urls": urls}, headers=bearer())
    assert by_url.status_code == 200, by_url.text
    body = by_url.json()
    assert body["version"] == 1 and body["model_id"] == trained_trees
    first, refused, second = body["results"]
    assert [first["file"], refused["file"], second["file"]] == urls
    for answer, expected in zip((first, second), by_file.json()["results"], strict=True):
        assert answer["status"] == "ok" and answer["label"] == expected["label"]
        assert answer["predictions"] == expected["predictions"]  # the same probabilities
    assert refused["status"] == "rejected" and refused["error"]["code"] == "url_http_error"
    # Every URL failing is the same 4xx as every file failing.
    page = client.post(f"/api/v1/models/{trained_trees}/predict/urls",
                       json={"urls": [server.url("/page")]}, headers=bearer())
    assert page.status_code == 415 and page.json()["error"]["code"] == "not_an_image"
    unknown = client.post(f"/api/v1/models/{trained_trees}/predict/urls?reject_unknown=true",
                          json={"urls": urls[:1]}, headers=bearer())
    assert unknown.status_code == 200, unknown.text
