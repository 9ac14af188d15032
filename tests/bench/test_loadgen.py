"""bench.loadgen against a stdlib HTTP/1.1 server: every request is answered and timed, bodies
arrive whole, non-2xx answers are failures, and a response without Content-Length stops it."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from bench.loadgen import encode_post, multipart_file, run_load


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive
    bodies: list[bytes] = []

    def do_POST(self) -> None:  # noqa: N802  (the stdlib's name)
        body = self.rfile.read(int(self.headers["Content-Length"]))
        Handler.bodies.append(body)
        if self.path == "/unframed":
            self.send_response(200)
            self.end_headers()
            self.wfile.write(b"x")
            self.close_connection = True
            return
        answer = b'{"ok": true}' * 500  # larger than one recv() of small chunks
        self.send_response(500 if self.path == "/fail" else 200)
        self.send_header("Content-Length", str(len(answer)))
        self.end_headers()
        self.wfile.write(answer)

    def log_message(self, *_args: object) -> None:
        pass


@pytest.fixture
def url() -> Iterator[str]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    Handler.bodies = []
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def requests_to(url: str, path: str) -> list[bytes]:
    out = []
    for index in range(3):
        body, kind = multipart_file("files", f"{index}.jpg", bytes([index]) * 1000, "image/jpeg")
        out.append(encode_post(url, path, headers={"Authorization": "Bearer k"}, body=body,
                               content_type=kind))
    return out


def test_every_answer_is_timed_and_every_body_arrives_whole(url: str) -> None:
    result = run_load(url, requests_to(url, "/ok"), clients=3, duration=0.5)
    assert len(result.latencies) > 3 and not result.failures
    assert all(0 < seconds < 5 for seconds in result.latencies)
    assert result.elapsed >= 0.5
    for body in Handler.bodies:  # each request's own 1000-byte file, whole
        index = int(body.split(b'filename="')[1][:1])
        assert bytes([index]) * 1000 in body and len(body) < 1300


def test_an_error_status_is_a_failure(url: str) -> None:
    result = run_load(url, requests_to(url, "/fail"), clients=2, duration=0.3)
    assert not result.latencies and result.failures
    assert result.failures[0].startswith("500 ")


def test_a_response_without_content_length_stops_the_run(url: str) -> None:
    with pytest.raises(RuntimeError, match="Content-Length"):
        run_load(url, requests_to(url, "/unframed"), clients=1, duration=0.3)
