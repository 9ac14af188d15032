from __future__ import annotations

import os
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from app.config import Settings
from app.main import create_app
from bench.server import free_port
from tests.http_receiver import Receiver

ROOT = Path(__file__).resolve().parents[1]
DATASETS = ROOT.parent / "shared" / "datasets"
BAD_INPUTS = DATASETS / "bad_inputs"
TREES = DATASETS / "customvision_trees"
API_KEY = "nn_test_key_alpha_0123456789abcdef"  # bootstrap keys: 32+ characters
# One folder of ONNX exports for the whole run and every server a test starts (they inherit the
# environment): exporting a backbone takes seconds, its file is keyed by weights and recipe.
ENGINES = Path(tempfile.gettempdir()) / "nanonet-test-engines"
os.environ.setdefault("NANONET_ENGINE_CACHE_DIR", str(ENGINES))
OTHER_KEY = "nn_test_key_bravo"


def bearer(key: str = API_KEY) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def make_settings(data_dir: Path, **overrides: object) -> Settings:
    values: dict[str, object] = {
        "data_dir": data_dir,
        "bootstrap_api_key": API_KEY,
        "create_first_account": False,
        "backbones": "mobilenet_v2",
        "augment_views": 0,
    }
    values.update(overrides)
    return Settings(**values)  # type: ignore[arg-type]


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    return make_settings(tmp_path / "data")


@pytest.fixture
def client(settings: Settings) -> Iterator[TestClient]:
    with TestClient(create_app(settings)) as test_client:
        yield test_client


def files_of(*paths: Path) -> list[tuple[str, tuple[str, bytes, str]]]:
    return [("files", (path.name, path.read_bytes(), "application/octet-stream"))
            for path in paths]


def create_model(client: TestClient, name: str = "trees", categories: tuple[str, ...] = (
        "hemlock", "japanese_cherry"), key: str = API_KEY) -> str:
    response = client.post("/api/v1/models", json={"name": name, "categories": list(categories)},
                           headers=bearer(key))
    assert response.status_code == 201, response.text
    return response.json()["id"]


def upload(client: TestClient, model_id: str, category: str, paths: list[Path],
           key: str = API_KEY):  # type: ignore[no-untyped-def]
    return client.post(f"/api/v1/models/{model_id}/images", data={"category": category},
                       files=files_of(*paths), headers=bearer(key))


def wait_for_job(client: TestClient, job_id: str, key: str = API_KEY,
                 timeout: float = 600) -> dict:  # type: ignore[type-arg]
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        job = client.get(f"/api/v1/jobs/{job_id}", headers=bearer(key)).json()
        if job["status"] in ("succeeded", "failed"):
            return job
        time.sleep(0.2)
    raise AssertionError(f"job {job_id} did not finish in {timeout} s")


def tree_photos(label: str) -> list[Path]:
    return sorted((TREES / "train" / label).glob("*.jpg"))


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    """An HTTP server on loopback that records what it is sent (see tests.http_receiver)."""
    with Receiver() as running:
        yield running


@pytest.fixture
def trained_trees(client: TestClient) -> str:
    model_id = create_model(client)
    for label in ("hemlock", "japanese_cherry"):
        assert upload(client, model_id, label, tree_photos(label)).status_code == 200
    job_id = client.post(f"/api/v1/models/{model_id}/train", headers=bearer()).json()["job_id"]
    job = wait_for_job(client, job_id)
    assert job["status"] == "succeeded", job
    return model_id


def wait_for_port(port: int, timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with socket.socket() as sock:
            if sock.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.1)
    raise AssertionError(f"nothing listens on port {port} after {timeout} s")


@pytest.fixture(scope="session")
def redis_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A Redis for the full stack's tests: NANONET_TEST_REDIS_URL, or a private redis-server
    on a free loopback port for the session (CI must have one: .ci/run installs it)."""
    if url := os.environ.get("NANONET_TEST_REDIS_URL"):
        yield url
        return
    binary = shutil.which("redis-server")
    if binary is None:
        if os.environ.get("CI"):
            pytest.fail("CI must provide redis-server (apt-get install redis-server)")
        pytest.skip("install redis-server or set NANONET_TEST_REDIS_URL to test Celery")
    port = free_port()
    workdir = tmp_path_factory.mktemp("redis")
    process = subprocess.Popen(
        [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
         "--dir", str(workdir)],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    try:
        wait_for_port(port)
        yield f"redis://127.0.0.1:{port}/0"
    finally:
        process.terminate()
        process.wait(timeout=10)
