"""One embedded `nanonet serve` for a benchmark or the browser tests: free loopback port, fresh
data dir, own log.

    with embedded_server({"NANONET_BACKBONES": "mobilenet_v2"}) as server:
        httpx.get(f"{server.url}/health", headers={"Authorization": f"Bearer {server.key}"})

Given `data_dir` (and the same `key`), it runs on that dir and leaves it in place, so a test can
SIGKILL `server.pid` and start another on the same data.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass
from pathlib import Path

import httpx2 as httpx

START_TIMEOUT_S = 180


@dataclass(frozen=True)
class Server:
    url: str
    key: str
    pid: int
    log_path: Path
    data_dir: Path  # NANONET_DATA_DIR


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


ENGINES = Path(__file__).resolve().parents[1] / "data" / "engines"


@contextmanager
def embedded_server(extra_env: Mapping[str, str] | None = None, *,
                    log_path: Path | None = None, data_dir: Path | None = None,
                    key: str | None = None) -> Iterator[Server]:
    """Yield a started server; stop it (kill it if it hangs) and remove its data dir after
    (one given as `data_dir` is left as it is).

    The server's output goes to `log_path` (default: a file in its temporary data dir, gone
    afterwards), so the benchmark's own output stays readable; its tail is shown if the server
    does not start.
    """
    port, key = free_port(), key or "bench-" + os.urandom(16).hex()  # bootstrap keys: 32+
    kept = nullcontext(str(data_dir)) if data_dir is not None else None
    with kept or tempfile.TemporaryDirectory(prefix="nanonet-bench-") as directory:
        log_path = log_path or Path(directory) / "server.log"
        env = {**os.environ, "NANONET_DATA_DIR": directory, "NANONET_BOOTSTRAP_API_KEY": key,
               "NANONET_CREATE_FIRST_ACCOUNT": "false", **(extra_env or {})}
        # The backbones' ONNX exports are made once per install, not once per fresh data dir:
        # benches share `make run`'s (data/engines) unless told otherwise.
        env.setdefault("NANONET_ENGINE_CACHE_DIR", str(ENGINES))
        with log_path.open("w") as log:
            process = subprocess.Popen(
                [str(Path(sys.executable).parent / "nanonet"), "serve", "--host", "127.0.0.1",
                 "--port", str(port), "--log-level", "warning"],
                # cwd is the data dir, so no stray .env of the developer's reaches the settings.
                env=env, cwd=directory, stdout=log, stderr=subprocess.STDOUT)
            url = f"http://127.0.0.1:{port}"
            try:
                _wait_until_healthy(url, process, log_path)
                yield Server(url, key, process.pid, log_path, Path(directory))
            finally:
                process.terminate()
                try:
                    process.wait(timeout=30)
                except subprocess.TimeoutExpired:
                    process.kill()
                    process.wait()


def _wait_until_healthy(url: str, process: subprocess.Popen[bytes], log_path: Path) -> None:
    deadline = time.monotonic() + START_TIMEOUT_S
    while True:
        try:
            if httpx.get(f"{url}/health", timeout=2).status_code == 200:
                return
        except httpx.TransportError:
            pass
        if process.poll() is not None or time.monotonic() > deadline:
            tail = log_path.read_text(errors="replace")[-3000:]
            raise RuntimeError(f"`nanonet serve` did not become healthy; its log ({log_path}):"
                               f"\n{tail}")
        time.sleep(0.3)
