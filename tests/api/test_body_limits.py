"""Request bodies are bounded as they arrive, and /api asks for a key before reading one.

The first two tests run a real `nanonet serve` (bench/server.py) and watch its memory and the
temp files it holds open; the others drive the ASGI app with a receive() that counts what the
app pulls, so "not read" is measured, not assumed.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import threading
import time
import tracemalloc
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anyio
import httpx2 as httpx
import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image as PILImage

from app.main import create_app
from bench.server import Server, embedded_server
from tests.conftest import API_KEY, bearer, create_model, files_of, make_settings, tree_photos

MiB = 1024 * 1024
GB = 1_000_000_000
CHUNK = 64 * 1024
BOUNDARY = "nanonet-test-boundary"
PART_HEAD = (f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="files"; filename="big.jpg"'
             '\r\nContent-Type: application/octet-stream\r\n\r\n').encode()
MULTIPART = f"multipart/form-data; boundary={BOUNDARY}"
SERVER_LIMIT = 8 * MiB


# --- a real server, a 1 GB chunked body ----------------------------------------------------


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Server, Path]]:
    spool = tmp_path_factory.mktemp("server-tmp")  # the server's TMPDIR: where parts spool
    with embedded_server({"TMPDIR": str(spool), "NANONET_MAX_REQUEST_BYTES": str(SERVER_LIMIT),
                          "NANONET_EXTRACT_ON_UPLOAD": "false"}) as running:
        yield running, spool


def status_kib(pid: int, field: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise AssertionError(f"no {field} in /proc/{pid}/status")


def spooled_bytes(pid: int, spool: Path) -> int:
    """Bytes in the files under `spool` the process holds open (unnamed O_TMPFILE ones too)."""
    total = 0
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        try:
            if os.readlink(fd).startswith(str(spool)):
                total += os.stat(fd).st_size
        except OSError:  # closed while we looked
            continue
    return total


class SpoolWatch:
    """Samples spooled_bytes every few milliseconds while a request runs; keeps the peak."""

    def __init__(self, pid: int, spool: Path) -> None:
        self.pid, self.spool, self.peak = pid, spool, 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, spooled_bytes(self.pid, self.spool))
            time.sleep(0.002)

    def __enter__(self) -> SpoolWatch:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._thread.join()


class GigabyteBody:
    """1 GB of multipart body, made as it is sent; counts what the client managed to send."""

    def __init__(self) -> None:
        self.sent = 0

    def __iter__(self) -> Iterator[bytes]:
        yield PART_HEAD
        block = b"\xff" * CHUNK
        while self.sent < GB:
            self.sent += CHUNK
            yield block


def send_gigabyte(server: Server, spool: Path, headers: dict[str, str]) -> dict[str, Any]:
    """POST a chunked 1 GB upload; return the answer and what it cost the server."""
    with httpx.Client(timeout=60) as http:
        model = http.post(f"{server.url}/api/v1/models", headers=bearer(server.key),
                          json={"name": "big", "categories": ["a", "b"]}).json()["id"]
        hwm_before = status_kib(server.pid, "VmHWM")
        body = GigabyteBody()
        with SpoolWatch(server.pid, spool) as watch:
            started = time.monotonic()
            response = http.post(f"{server.url}/api/v1/models/{model}/images", content=iter(body),
                                 headers={"Content-Type": MULTIPART, **headers})
            seconds = time.monotonic() - started
        return {"response": response, "seconds": seconds, "sent": body.sent,
                "hwm_growth": (status_kib(server.pid, "VmHWM") - hwm_before) * 1024,
                "spool_peak": watch.peak, "spool_after": spooled_bytes(server.pid, spool)}


def test_an_unauthenticated_1_gb_chunked_upload_is_refused_at_once_reading_nothing(
        server: tuple[Server, Path]) -> None:
    running, spool = server
    cost = send_gigabyte(running, spool, headers={})
    assert cost["response"].status_code == 401
    assert cost["response"].json()["error"]["code"] == "missing_api_key"
    assert cost["seconds"] < 1.0, cost
    assert cost["spool_peak"] == 0, cost  # not one byte of it reached a temp file
    assert cost["hwm_growth"] < 16 * MiB, cost  # peak RSS unchanged (sampling noise aside)
    assert cost["sent"] < 64 * MiB, cost  # the connection was closed, not drained
    wrong = send_gigabyte(running, spool, headers=bearer("nn_not_a_key_" + "0" * 24))
    assert wrong["response"].status_code == 401, wrong
    assert wrong["response"].json()["error"]["code"] == "invalid_api_key"
    assert wrong["seconds"] < 1.0 and wrong["spool_peak"] == 0, wrong


def test_an_authenticated_chunked_upload_stops_at_the_limit(server: tuple[Server, Path]) -> None:
    running, spool = server
    cost = send_gigabyte(running, spool, headers=bearer(running.key))
    assert cost["response"].status_code == 413, cost
    error = cost["response"].json()["error"]
    assert error["code"] == "request_too_large" and str(SERVER_LIMIT) in error["message"]
    assert cost["seconds"] < 5.0, cost
    assert cost["spool_peak"] <= SERVER_LIMIT + MiB, cost  # spooled up to the limit, no further
    assert cost["spool_after"] == 0, cost  # and the parser deleted what it spooled
    assert cost["hwm_growth"] < 32 * MiB, cost
    with httpx.Client(timeout=60) as http:  # the server is fine afterwards
        assert http.get(f"{running.url}/health").status_code == 200


# --- the ASGI app, with a counting receive() ------------------------------------------------


@pytest.fixture
def small(tmp_path: Path) -> Iterator[TestClient]:
    settings = make_settings(tmp_path / "data", extract_on_upload=False,
                             max_request_bytes=200_000, max_json_bytes=2_000)
    with TestClient(create_app(settings)) as client:
        yield client


class Exchange:
    """One request driven straight through the ASGI app: the body offered in chunks, what the
    app pulled of it counted, the response collected."""

    def __init__(self, client: TestClient, method: str, path: str, *, headers: dict[str, str],
                 chunks: list[bytes]) -> None:
        self.pulled = 0
        self.status: int | None = None
        self.body = b""
        pending = iter(chunks)

        async def receive() -> dict[str, Any]:
            chunk = next(pending, None)
            if chunk is None:
                return {"type": "http.request", "body": b"", "more_body": False}
            self.pulled += len(chunk)
            return {"type": "http.request", "body": chunk, "more_body": True}

        async def send(message: dict[str, Any]) -> None:
            if message["type"] == "http.response.start":
                self.status = message["status"]
            elif message["type"] == "http.response.body":
                self.body += message.get("body", b"")

        scope = {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1",
                 "method": method, "scheme": "http", "path": path, "raw_path": path.encode(),
                 "query_string": b"", "root_path": "", "client": ("127.0.0.1", 1),
                 "server": ("testserver", 80),
                 "headers": [(b"host", b"testserver"),
                             *((k.lower().encode(), v.encode()) for k, v in headers.items())]}

        async def run() -> None:
            with anyio.fail_after(30):
                await client.app(scope, receive, send)  # type: ignore[arg-type]

        assert client.portal is not None
        client.portal.call(run)

    def error_code(self) -> str:
        return str(json.loads(self.body)["error"]["code"])


def chunked(kind: str) -> dict[str, str]:
    return {"Transfer-Encoding": "chunked", "Content-Type": kind}


def test_a_chunked_multipart_body_is_read_only_up_to_its_limit(small: TestClient) -> None:
    model_id = create_model(small)
    sent = Exchange(small, "POST", f"/api/v1/models/{model_id}/images",
                    headers={**chunked(MULTIPART), **bearer()},
                    chunks=[PART_HEAD] + [b"\xff" * CHUNK] * 1000)  # 64 MB offered
    assert sent.status == 413 and sent.error_code() == "request_too_large"
    assert 200_000 < sent.pulled <= 200_000 + CHUNK + len(PART_HEAD)


def test_a_chunked_json_body_is_read_only_up_to_its_smaller_limit(small: TestClient) -> None:
    sent = Exchange(small, "POST", "/api/v1/models",
                    headers={**chunked("application/json"), **bearer()},
                    chunks=[b'{"name": "', *[b"n" * 1000] * 1000, b'", "categories": ["a", "b"]}'])
    assert sent.status == 413 and sent.error_code() == "request_too_large"
    assert sent.pulled <= 2_000 + 1000 + 10


def test_a_declared_length_over_the_limit_is_refused_before_reading(small: TestClient) -> None:
    model_id = create_model(small)
    for path, kind, length in [(f"/api/v1/models/{model_id}/images", MULTIPART, 200_001),
                               ("/api/v1/models", "application/json", 2_001)]:
        sent = Exchange(small, "POST", path, chunks=[b"x" * length],
                        headers={"Content-Type": kind, "Content-Length": str(length), **bearer()})
        assert sent.status == 413 and sent.error_code() == "request_too_large"
        assert sent.pulled == 0


def test_bodies_under_the_limits_still_work(small: TestClient) -> None:
    model_id = create_model(small)  # a JSON body under 2,000 bytes
    response = small.post(f"/api/v1/models/{model_id}/images", data={"category": "hemlock"},
                          files=files_of(*tree_photos("hemlock")[:2]), headers=bearer())
    assert response.status_code == 200, response.text
    assert [r["status"] for r in response.json()["results"]] == ["accepted", "accepted"]
    too_many = small.post(f"/api/v1/models/{model_id}/images", data={"category": "hemlock"},
                          files=files_of(*tree_photos("hemlock")[:6]), headers=bearer())
    assert too_many.status_code == 413  # ~260 kB of photos: over the 200,000-byte limit
    assert too_many.headers["connection"] == "close"


@pytest.mark.parametrize(("headers", "code"), [
    ({}, "missing_api_key"),
    ({"Authorization": "Bearer nn_wrong_key_0123456789abcdef0123"}, "invalid_api_key"),
    ({"Authorization": "Basic Og=="}, "missing_api_key"),  # ":" — no username at all
])
def test_an_api_body_without_a_valid_key_is_401_unread(small: TestClient,
                                                       headers: dict[str, str], code: str) -> None:
    model_id = create_model(small)
    for path, kind in [(f"/api/v1/models/{model_id}/images", MULTIPART),
                       ("/api/v1/models", "application/json"),
                       (f"/api/v1/models/{model_id}/batch-predictions", "application/json")]:
        sent = Exchange(small, "POST", path, headers={**chunked(kind), **headers},
                        chunks=[b"{}"] * 10)
        assert sent.status == 401 and sent.error_code() == code, (path, sent.body)
        assert sent.pulled == 0, path


def test_a_valid_key_lets_the_body_through(small: TestClient) -> None:
    sent = Exchange(small, "POST", "/api/v1/models",
                    headers={**chunked("application/json"), "Authorization": f"Bearer {API_KEY}"},
                    chunks=[b'{"name": "chunked", ', b'"categories": ["a", "b"]}'])
    assert sent.status == 201, sent.body
    assert small.get("/api/v1/models", headers=bearer()).json()["models"][0]["name"] == "chunked"


def _count_key_lookups(monkeypatch: pytest.MonkeyPatch) -> dict[str, list[str]]:
    """{"gate": keys the intake guard looked up, "route": keys the routes did}."""
    import app.api.deps
    import app.api.intake_guard
    from app.services.accounts import authenticate

    looked_up: dict[str, list[str]] = {"gate": [], "route": []}
    for where, module in (("gate", app.api.intake_guard), ("route", app.api.deps)):
        def counting(session, *, key, where=where):  # type: ignore[no-untyped-def]
            looked_up[where].append(key)
            return authenticate(session, key=key)

        monkeypatch.setattr(module, "authenticate", counting)
    return looked_up


def test_a_key_the_gate_checked_is_not_looked_up_again(tmp_path: Path,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    looked_up = _count_key_lookups(monkeypatch)
    settings = make_settings(tmp_path / "data", extract_on_upload=False,
                             key_check_unread_above=0)  # every body: the key first
    with TestClient(create_app(settings)) as client:
        created = client.post("/api/v1/models", headers=bearer(),
                              json={"name": "once", "categories": ["a", "b"]})
        assert created.status_code == 201
        assert looked_up == {"gate": [API_KEY], "route": []}  # the gate's lookup only
        looked_up["gate"].clear()
        assert client.get("/api/v1/models", headers=bearer()).status_code == 200
        assert looked_up == {"gate": [], "route": [API_KEY]}  # no body, no gate


def test_a_small_declared_body_is_read_and_its_key_checked_by_the_route(
        small: TestClient, monkeypatch: pytest.MonkeyPatch) -> None:
    looked_up = _count_key_lookups(monkeypatch)
    body = json.dumps({"name": "small", "categories": ["a", "b"]}).encode()
    sent = Exchange(small, "POST", "/api/v1/models", chunks=[body],
                    headers={"Content-Type": "application/json",
                             "Content-Length": str(len(body)), **bearer()})
    assert sent.status == 201 and looked_up == {"gate": [], "route": [API_KEY]}  # once
    refused = Exchange(small, "POST", "/api/v1/models", chunks=[body],
                       headers={"Content-Type": "application/json",
                                "Content-Length": str(len(body)),
                                "Authorization": "Bearer nn_wrong_key_0123456789abcdef0123"})
    assert refused.status == 401 and refused.error_code() == "invalid_api_key"
    assert refused.pulled == len(body)  # read (it is small), then refused by the route
    assert [m["name"] for m in small.get("/api/v1/models", headers=bearer()).json()["models"]] \
        == ["small"]  # nothing of the refused one was kept


def test_a_small_length_beside_a_chunked_encoding_is_no_small_body(small: TestClient) -> None:
    # Transfer-Encoding overrides Content-Length: a body so framed may run on far past the
    # length it declares, so it is refused before a byte is read, as any chunked one.
    sent = Exchange(small, "POST", "/api/v1/models", chunks=[b"{}"] * 10,
                    headers={**chunked("application/json"), "Content-Length": "2"})
    assert sent.status == 401 and sent.error_code() == "missing_api_key"
    assert sent.pulled == 0


def test_a_declared_body_past_the_unread_limit_needs_its_key_first(tmp_path: Path) -> None:
    settings = make_settings(tmp_path / "data", extract_on_upload=False,
                             key_check_unread_above=10)
    body = json.dumps({"name": "not small", "categories": ["a", "b"]}).encode()
    with TestClient(create_app(settings)) as client:
        sent = Exchange(client, "POST", "/api/v1/models", chunks=[body],
                        headers={"Content-Type": "application/json",
                                 "Content-Length": str(len(body))})
    assert sent.status == 401 and sent.error_code() == "missing_api_key"
    assert sent.pulled == 0


def test_web_routes_get_the_byte_limit_but_not_the_key_gate(small: TestClient) -> None:
    form = {"Content-Type": "application/x-www-form-urlencoded"}
    unsigned = Exchange(small, "POST", "/web/sign-in", headers={**chunked(form["Content-Type"])},
                        chunks=[b"key=nothing"])
    assert unsigned.status != 401 and unsigned.pulled > 0  # the web form answers for itself
    over = Exchange(small, "POST", "/web/sign-in", headers=chunked(form["Content-Type"]),
                    chunks=[b"key=" + b"k" * 1000] * 5)
    assert over.status == 413 and over.error_code() == "request_too_large"
    assert over.pulled <= 2_000 + 1004


def test_an_uploaded_file_is_never_held_whole_in_memory(tmp_path: Path) -> None:
    """The part stays in the parser's spooled file: decoding and hashing read it a block at a
    time (reading it into bytes, as before, peaked at 20 MB for this 7 MB photo)."""
    noise = np.random.default_rng(1).integers(0, 256, (1600, 1600, 3), dtype=np.uint8)
    buffer = io.BytesIO()
    PILImage.fromarray(noise).save(buffer, format="PNG")  # incompressible: 7.7 MB
    data = buffer.getvalue()
    chunks = [PART_HEAD, *(data[i:i + CHUNK] for i in range(0, len(data), CHUNK)),
              f"\r\n--{BOUNDARY}--\r\n".encode()]
    settings = make_settings(tmp_path / "data", extract_on_upload=False)
    with TestClient(create_app(settings)) as client:
        model_id = create_model(client)
        tracemalloc.start()
        try:
            sent = Exchange(client, "POST", f"/api/v1/models/{model_id}/images",
                            headers={**chunked(MULTIPART), **bearer()}, chunks=chunks)
            _, peak = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
        assert sent.status == 200, sent.body
        [result] = json.loads(sent.body)["results"]
        assert result["status"] == "accepted"
        assert result["sha256"] == hashlib.sha256(data).hexdigest()
        assert peak < len(data) * 2 // 3, peak  # under the file's own size
