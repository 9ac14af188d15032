"""A real HTTP server on loopback for tests of what NanoNet sends out (webhook deliveries) and
fetches (images by URL)."""

from __future__ import annotations

import ssl
import threading
import time
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


@dataclass(frozen=True)
class Received:
    at: float  # time.monotonic()
    path: str
    headers: dict[str, str]  # names lowercased
    body: bytes


class Receiver:
    """A real HTTP server on loopback that records every request and answers from `plan`
    (one entry per request, then `default`): a status code, "hang" (answer nothing until the
    test ends) or "drip" (a status line, then a header a byte at a time, for seconds)."""

    def __init__(self, plan: list[int | str] | None = None, *, default: int | str = 200,
                 location: str = "/elsewhere", tls: ssl.SSLContext | None = None) -> None:
        self.plan = list(plan or [])
        self.default = default
        self.location = location
        self.requests: list[Received] = []
        self.released = threading.Event()
        self._lock = threading.Lock()
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self._server.daemon_threads = True
        if tls is not None:
            self._server.socket = tls.wrap_socket(self._server.socket, server_side=True)
        self._thread = threading.Thread(target=self._server.serve_forever, args=(0.05,),
                                        daemon=True)

    @property
    def port(self) -> int:
        return int(self._server.server_address[1])

    def url(self, path: str = "/hook") -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def __enter__(self) -> Receiver:
        self._thread.start()
        return self

    def __exit__(self, *_exc: object) -> None:
        self.released.set()
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=10)

    def wait_for(self, count: int, timeout: float = 15) -> list[Received]:
        deadline = time.monotonic() + timeout
        while len(self.requests) < count:
            if time.monotonic() > deadline:
                raise AssertionError(f"{len(self.requests)} requests arrived, not {count}")
            time.sleep(0.02)
        return list(self.requests)

    def _answer(self) -> int | str:
        with self._lock:
            return self.plan.pop(0) if self.plan else self.default

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("content-length") or 0))
                self._record(body)

            def do_GET(self) -> None:
                self._record(b"")

            def _record(self, body: bytes) -> None:
                receiver.requests.append(Received(
                    at=time.monotonic(), path=self.path,
                    headers={key.lower(): value for key, value in self.headers.items()},
                    body=body))
                answer = receiver._answer()
                if answer == "hang":
                    receiver.released.wait(30)
                    return
                if answer == "drip":
                    self.wfile.write(b"HTTP/1.1 200 OK\r\nX-Slow: ")
                    for _ in range(100):
                        if receiver.released.wait(0.1):
                            return
                        self.wfile.write(b"a")
                        self.wfile.flush()
                    return
                assert isinstance(answer, int)
                payload = b"receiver says no" if answer >= 400 else b"ok"
                self.send_response(answer)
                if 300 <= answer < 400:
                    self.send_header("Location", receiver.location)
                self.send_header("Content-Length", str(len(payload)))
                self.send_header("Connection", "close")
                self.end_headers()
                self.wfile.write(payload)

            def log_message(self, *_args: object) -> None:
                pass

        return Handler
