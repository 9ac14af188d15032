"""One embedded `nanonet serve` for the whole benchmark: free loopback port, fresh data dir.

The same approach as bench/hymenoptera_http.py, but the server's own log goes to a file so the
benchmark's output stays readable.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx

from bench.hymenoptera_http import free_port


@contextmanager
def embedded_server(extra_env: dict[str, str], log_path: Path) -> Iterator[tuple[str, str, int]]:
    """Yield (url, api key, pid) of a started server; stop it and remove its data dir after."""
    port, key = free_port(), "bench-" + os.urandom(8).hex()
    with tempfile.TemporaryDirectory(prefix="nanonet-fewshot-") as data_dir, \
            log_path.open("w") as log:
        env = {**os.environ, "NANONET_DATA_DIR": data_dir, "NANONET_BOOTSTRAP_API_KEY": key,
               "NANONET_CREATE_FIRST_ACCOUNT": "false", **extra_env}
        process = subprocess.Popen(
            [str(Path(sys.executable).parent / "nanonet"), "serve", "--host", "127.0.0.1",
             "--port", str(port), "--log-level", "warning"],
            env=env, stdout=log, stderr=subprocess.STDOUT)
        url = f"http://127.0.0.1:{port}"
        try:
            deadline = time.monotonic() + 180
            while True:
                try:
                    if httpx.get(f"{url}/health", timeout=2).status_code == 200:
                        break
                except httpx.TransportError:
                    pass
                if process.poll() is not None or time.monotonic() > deadline:
                    log.flush()
                    tail = log_path.read_text(errors="replace")[-3000:]
                    raise SystemExit(f"the server did not start; its log ({log_path}):\n{tail}")
                time.sleep(0.3)
            yield url, key, process.pid
        finally:
            process.terminate()
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
