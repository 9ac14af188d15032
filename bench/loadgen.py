"""A lean HTTP/1.1 load generator: N keep-alive connections driven by one thread.

The serving bench measures the server, but its clients share the 2-core machine: 16 threads of
httpx building multipart bodies and parsing JSON took CPU the server then lacked (at one
client, httpx's own work put about 2 ms on every predict's latency against http.client). Here
each request's bytes are encoded once before the clock starts and one thread multiplexes every
connection with `selectors`, so a request costs the client a send, a few recv calls and a
header scan. What it checks per response: the status line, and Content-Length framing (a
chunked or unframed response fails the run, as this server never sends one).
"""

from __future__ import annotations

import selectors
import socket
import time
from dataclasses import dataclass, field
from urllib.parse import urlsplit


def encode_post(url: str, path: str, *, headers: dict[str, str], body: bytes,
                content_type: str) -> bytes:
    """The whole HTTP/1.1 POST request, ready to send."""
    host = urlsplit(url).netloc
    lines = [f"POST {path} HTTP/1.1", f"Host: {host}", f"Content-Type: {content_type}",
             f"Content-Length: {len(body)}", *(f"{k}: {v}" for k, v in headers.items())]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body


def multipart_file(name: str, filename: str, data: bytes, mime: str) -> tuple[bytes, str]:
    """(body, content type) of a multipart/form-data body holding one file."""
    boundary = "nanonet-bench-boundary-7d3f1c"
    head = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"{name}\"; "
            f"filename=\"{filename}\"\r\nContent-Type: {mime}\r\n\r\n").encode()
    tail = f"\r\n--{boundary}--\r\n".encode()
    return head + data + tail, f"multipart/form-data; boundary={boundary}"


@dataclass
class _Connection:
    sock: socket.socket
    requests: list[bytes]
    index: int
    started: float = 0.0
    sent: int = 0
    buffer: bytearray = field(default_factory=bytearray)
    body_left: int = -1  # -1: still reading the headers
    status: int = 0


@dataclass
class LoadResult:
    latencies: list[float]
    failures: list[str]
    elapsed: float


def run_load(url: str, requests: list[bytes], *, clients: int, duration: float,
             warmup: int = 1) -> LoadResult:
    """Keep `clients` connections busy, each sending requests[i], requests[i + clients]...
    back to back; latencies (s) of the 2xx answers to requests sent within `duration` once
    every connection has had `warmup` answers."""
    parts = urlsplit(url)
    address = (parts.hostname or "127.0.0.1", parts.port or 80)
    selector = selectors.DefaultSelector()
    connections: list[_Connection] = []
    try:
        for offset in range(clients):
            sock = socket.create_connection(address)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            connections.append(_Connection(sock, requests, offset))
        return _Run(selector, connections, clients=clients, duration=duration,
                    warmup=warmup).drive()
    finally:
        selector.close()
        for conn in connections:
            conn.sock.close()


class _Run:
    def __init__(self, selector: selectors.BaseSelector, connections: list[_Connection], *,
                 clients: int, duration: float, warmup: int) -> None:
        self.selector = selector
        self.connections = connections
        self.clients = clients
        self.duration = duration
        self.warm = {id(c): warmup for c in connections}
        self.began = time.perf_counter()
        self.stop_at: float | None = None  # set once every connection is warm
        self.latencies: list[float] = []
        self.failures: list[str] = []

    def send_next(self, conn: _Connection) -> None:
        conn.started = time.perf_counter()
        conn.sock.sendall(conn.requests[conn.index % len(conn.requests)])  # loopback: at once
        conn.index += self.clients
        conn.buffer.clear()
        conn.body_left = -1
        self.selector.register(conn.sock, selectors.EVENT_READ, conn)

    def drive(self) -> LoadResult:
        for conn in self.connections:
            self.send_next(conn)
        running = len(self.connections)
        while running:
            events = self.selector.select(timeout=120)
            if not events:
                raise RuntimeError("no answer in 120 s")
            for key, _ in events:
                conn = key.data
                if not self.read(conn):
                    continue
                self.selector.unregister(conn.sock)
                self.record(conn, time.perf_counter() - conn.started)
                if self.stop_at is not None and time.perf_counter() >= self.stop_at:
                    running -= 1
                    continue
                self.send_next(conn)
        return LoadResult(self.latencies, self.failures, time.perf_counter() - self.began)

    def read(self, conn: _Connection) -> bool:
        """Take what arrived; return whether the response is complete."""
        chunk = conn.sock.recv(1 << 16)
        if not chunk:
            raise RuntimeError("the server closed a keep-alive connection")
        conn.buffer += chunk
        if conn.body_left < 0:
            end = conn.buffer.find(b"\r\n\r\n")
            if end < 0:
                return False
            head = bytes(conn.buffer[:end]).decode("latin-1").split("\r\n")
            conn.status = int(head[0].split(" ", 2)[1])
            fields = {k.strip().lower(): v.strip() for k, _, v in
                      (line.partition(":") for line in head[1:])}
            if "content-length" not in fields:
                raise RuntimeError(f"a response without Content-Length: {head}")
            del conn.buffer[:end + 4]
            conn.body_left = int(fields["content-length"]) - len(conn.buffer)
        else:
            conn.body_left -= len(chunk)
        return conn.body_left <= 0

    def record(self, conn: _Connection, took: float) -> None:
        if self.warm[id(conn)] > 0:
            self.warm[id(conn)] -= 1
            if self.stop_at is None and not any(self.warm.values()):
                self.began = time.perf_counter()  # every connection warm: the clock starts
                self.stop_at = self.began + self.duration
        elif self.stop_at is not None and self.began <= conn.started < self.stop_at:
            if 200 <= conn.status < 300:
                self.latencies.append(took)
            else:
                self.failures.append(f"{conn.status} {bytes(conn.buffer[:200])!r}")
