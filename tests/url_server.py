"""A real HTTP server on loopback that images by URL are fetched from, with the ways a server
can be hostile or broken: redirects, endless or oversized bodies, stalls, pages, errors."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, quote, unquote, urlsplit

CHUNK = b"\xff" * 65536


@dataclass(frozen=True)
class Asked:
    path: str
    host: str  # the Host header


class UrlServer:
    """Serves files under `root` and these paths (one thread per request):

    /files/<path>            the file under root, with its Content-Length
    /redirect/<n>/<path>     302 to /redirect/<n-1>/<path>; at 0, to /<path>
    /to?url=<url>            302 to that URL, wherever it points
    /slow/<seconds>/<path>   waits, then answers as /<path>
    /stall                   200 and a few bytes of a long body, then nothing until the end
    /endless                 200, chunked, bytes for ever (`sent` counts them)
    /declared/<bytes>        200 with that Content-Length, then bytes until it or a closed
                             connection stops it (`sent` counts them)
    /page                    an HTML page
    /status/<code>           that status, a short text body
    """

    def __init__(self, root: Path) -> None:
        self.root = root.resolve()
        self.asked: list[Asked] = []
        self.sent = 0  # body bytes written by /endless and /declared, until the client left
        self.streaming_done = threading.Event()
        self.released = threading.Event()
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, args=(0.05,),
                                        daemon=True)

    @property
    def port(self) -> int:
        return int(self._server.server_address[1])

    def url(self, path: str, host: str = "127.0.0.1") -> str:
        return f"http://{host}:{self.port}{path}"

    def file_url(self, file: Path, host: str = "127.0.0.1") -> str:
        return self.url("/files/" + quote(file.resolve().relative_to(self.root).as_posix()),
                        host)

    def __enter__(self) -> UrlServer:
        self._thread.start()
        return self

    def __exit__(self, *_exc: object) -> None:
        self.released.set()
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=10)

    def paths(self) -> list[str]:
        return [asked.path for asked in self.asked]

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_GET(self) -> None:
                server.asked.append(Asked(self.path, self.headers.get("host", "")))
                self._answer(self.path)

            def _answer(self, path: str) -> None:
                parts = urlsplit(path)
                head, _, rest = parts.path.lstrip("/").partition("/")
                if head == "files":
                    self._file(rest)
                elif head == "redirect":
                    count, _, target = rest.partition("/")
                    left = int(count) - 1
                    self._redirect(f"/redirect/{left}/{target}" if left > 0 else f"/{target}")
                elif head == "to":
                    self._redirect(parse_qs(parts.query)["url"][0])
                elif head == "slow":
                    seconds, _, target = rest.partition("/")
                    if not server.released.wait(float(seconds)):
                        self._answer(f"/{target}")
                elif head == "stall":
                    self._start(200, "image/jpeg", length=10_000_000)
                    self.wfile.write(b"\xff\xd8\xff")
                    self.wfile.flush()
                    server.released.wait(30)
                elif head == "endless":
                    self._stream(None)
                elif head == "declared":
                    self._stream(int(rest))
                elif head == "page":
                    self._body(200, "text/html", b"<!doctype html><title>Ants</title><p>ants</p>")
                elif head == "status":
                    self._body(int(rest), "text/plain", b"no image here")
                else:
                    self._body(404, "text/plain", b"unknown path")

            def _file(self, relative: str) -> None:
                file = (server.root / unquote(relative)).resolve()
                if not file.is_relative_to(server.root) or not file.is_file():
                    self._body(404, "text/plain", b"no such file")
                    return
                self._body(200, "image/jpeg", file.read_bytes())

            def _redirect(self, location: str) -> None:
                self.send_response(302)
                self.send_header("Location", location)
                self.send_header("Content-Length", "0")
                self.send_header("Connection", "close")
                self.end_headers()

            def _start(self, status: int, content_type: str, *, length: int | None) -> None:
                self.send_response(status)
                self.send_header("Content-Type", content_type)
                if length is None:
                    self.send_header("Transfer-Encoding", "chunked")
                else:
                    self.send_header("Content-Length", str(length))
                self.send_header("Connection", "close")
                self.end_headers()

            def _body(self, status: int, content_type: str, body: bytes) -> None:
                self._start(status, content_type, length=len(body))
                self.wfile.write(body)

            def _stream(self, length: int | None) -> None:
                """Bytes until `length` (None: for ever) or until the client hangs up."""
                server.sent = 0
                self._start(200, "image/jpeg", length=length)
                try:
                    for chunk in _chunks(length):
                        self.wfile.write(b"%x\r\n%s\r\n" % (len(chunk), chunk)
                                         if length is None else chunk)
                        server.sent += len(chunk)
                except OSError:  # the client closed the connection: what this is for
                    pass
                finally:
                    server.streaming_done.set()

            def log_message(self, *_args: object) -> None:
                pass

        return Handler


def _chunks(length: int | None) -> Iterator[bytes]:
    left = length if length is not None else 1 << 40
    while left > 0:
        chunk = CHUNK[:left]
        left -= len(chunk)
        yield chunk
