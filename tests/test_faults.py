"""Faults injected into a real `nanonet serve` process (issue 10, item 7).

- SIGKILL during an upload burst, restart on the same data dir: no row without its blob, no
  stuck job, the startup sweep removes the orphan files, every upload answered `accepted` is
  there.
- SIGKILL during a training, restart: the job is re-run or failed with a reason, never left
  running, and the model serves its previous version meanwhile.
- A full disk (a small tmpfs data dir): uploads past the space get 507 insufficient_storage,
  never a 500, and nothing is stored half.
- SQLite under concurrent writers (uploads to several models and trainings at once): no 5xx,
  no "database is locked" reaching a client.
"""

from __future__ import annotations

import hashlib
import io
import os
import signal
import sqlite3
import subprocess
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx2 as httpx
import pytest
from PIL import Image as PILImage

from bench.server import Server, embedded_server
from tests.conftest import tree_photos

pytestmark = pytest.mark.slow

LABELS = ("hemlock", "japanese_cherry")
KEY = "faults-" + "k" * 32
# Short leases so a killed run is noticed within seconds; a grace of 0 so the startup sweep
# removes every unreferenced file (nothing uploads while a server starts).
ENV = {"NANONET_BACKBONES": "mobilenet_v2", "NANONET_AUGMENT_VIEWS": "0",
       "NANONET_TORCH_THREADS": "1", "NANONET_ORPHAN_GRACE_SECONDS": "0",
       "NANONET_UPLOADS_PER_MINUTE": "100000", "NANONET_PREDICTIONS_PER_MINUTE": "100000",
       "NANONET_MIN_FREE_DISK_BYTES": "0", "NANONET_JOB_HEARTBEAT_INTERVAL": "0.5",
       "NANONET_JOB_LEASE_SECONDS": "2", "NANONET_JOB_RECONCILE_INTERVAL": "0.5"}
ACTIVE = ("queued", "running")


def _headers() -> dict[str, str]:
    return {"Authorization": f"Bearer {KEY}"}


@contextmanager
def _serve(data_dir: Path, log: Path, **env: str) -> Iterator[Server]:
    with embedded_server({**ENV, **env}, data_dir=data_dir, key=KEY, log_path=log) as server:
        yield server


def _kill(server: Server) -> None:
    os.kill(server.pid, signal.SIGKILL)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            os.kill(server.pid, 0)  # a zombie until embedded_server reaps it: still answers
        except ProcessLookupError:
            return
        try:
            httpx.get(f"{server.url}/health", timeout=0.5)
        except httpx.TransportError:
            return
        time.sleep(0.05)
    raise AssertionError("the server survived SIGKILL")


def _variants(count: int, *, scale: float = 1.0, seed: int = 0) -> list[tuple[str, bytes]]:
    """`count` distinct real photos of the trees set: each one re-encoded at its own quality
    (and `scale`), so each has bytes (a blob) of its own."""
    photos = [path for label in LABELS for path in tree_photos(label)]
    made: list[tuple[str, bytes]] = []
    for index in range(count):
        path = photos[index % len(photos)]
        with PILImage.open(path) as image:
            image = image.convert("RGB")
            if scale != 1.0:
                image = image.resize((int(image.width * scale), int(image.height * scale)))
            out = io.BytesIO()
            image.save(out, "JPEG", quality=60 + (index // len(photos) + seed * 7) % 38)
        made.append((f"{path.stem}-{seed}-{index}.jpg", out.getvalue()))
    return made


def _label_of(name: str) -> str:
    return "japanese_cherry" if name.startswith("japanese_cherry") else "hemlock"


def _create_model(server: Server, name: str = "trees") -> str:
    response = httpx.post(f"{server.url}/api/v1/models", headers=_headers(), timeout=30,
                          json={"name": name, "categories": list(LABELS)})
    assert response.status_code == 201, response.text
    return str(response.json()["id"])


def _upload(server: Server, model_id: str, category: str,
            files: list[tuple[str, bytes]], timeout: float = 60) -> httpx.Response:
    return httpx.post(f"{server.url}/api/v1/models/{model_id}/images", headers=_headers(),
                      data={"category": category}, timeout=timeout,
                      files=[("files", (name, data, "image/jpeg")) for name, data in files])


def _originals(server: Server, model_id: str) -> None:
    """Upload the set's own photos, labelled: enough to train."""
    for label in LABELS:
        files = [(path.name, path.read_bytes()) for path in tree_photos(label)]
        assert _upload(server, model_id, label, files).status_code == 200


def _train(server: Server, model_id: str) -> str:
    response = httpx.post(f"{server.url}/api/v1/models/{model_id}/train", headers=_headers(),
                          timeout=30)
    assert response.status_code == 202, response.text
    return str(response.json()["job_id"])


def _job(server: Server, job_id: str) -> dict[str, Any]:
    response = httpx.get(f"{server.url}/api/v1/jobs/{job_id}", headers=_headers(), timeout=30)
    assert response.status_code == 200, response.text
    return dict(response.json())


def _wait_job(server: Server, job_id: str, timeout: float = 300) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        job = _job(server, job_id)
        if job["status"] not in ACTIVE:
            return job
        time.sleep(0.3)
    raise AssertionError(f"job {job_id} still {job['status']} after {timeout} s: {job}")


def _db(data_dir: Path) -> sqlite3.Connection:
    return sqlite3.connect(f"file:{data_dir / 'nanonet.db'}?mode=ro", uri=True)


def _rows(data_dir: Path, sql: str) -> list[tuple[Any, ...]]:
    with _db(data_dir) as connection:
        return list(connection.execute(sql))


def _blob_files(data_dir: Path) -> dict[str, Path]:
    return {path.name: path for path in (data_dir / "images").glob("??/*")}


def _incoming(data_dir: Path) -> list[Path]:
    return list((data_dir / "images").glob(".incoming-*"))


def _wait_jobs_ended(server: Server, data_dir: Path, timeout: float = 300) -> None:
    deadline = time.monotonic() + timeout
    while True:
        active = _rows(data_dir, "SELECT id, kind, status FROM job WHERE status IN "
                                 "('queued', 'running')")
        if not active:
            return
        assert time.monotonic() < deadline, f"jobs never ended: {active}"
        time.sleep(0.5)


def _assert_rows_have_blobs(data_dir: Path) -> set[str]:
    """Every image row's blob exists, holds the bytes its name says, and decodes."""
    digests = {digest for (digest,) in _rows(data_dir, "SELECT DISTINCT sha256 FROM image")}
    blobs = _blob_files(data_dir)
    missing = digests - set(blobs)
    assert not missing, f"{len(missing)} image rows without their blob"
    for digest in digests:
        data = blobs[digest].read_bytes()
        assert hashlib.sha256(data).hexdigest() == digest, f"blob {digest} is partial"
        with PILImage.open(io.BytesIO(data)) as image:
            image.load()
    return digests


def test_sigkill_during_an_upload_burst(tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    data_dir.mkdir()
    per_client = [_variants(60, seed=seed) for seed in range(4)]
    accepted: list[tuple[int, str]] = []  # (image id, sha256) the clients were told
    statuses: list[int] = []
    lock = threading.Lock()

    with _serve(data_dir, tmp_path / "first.log") as server:
        model_id = _create_model(server)

        def client(files: list[tuple[str, bytes]]) -> None:
            for start in range(0, len(files), 3):
                batch = files[start:start + 3]
                try:
                    response = _upload(server, model_id, _label_of(batch[0][0]), batch)
                except httpx.TransportError:
                    return  # the server is gone
                with lock:
                    statuses.append(response.status_code)
                    if response.status_code == 200:
                        accepted.extend((r["image_id"], r["sha256"])
                                        for r in response.json()["results"]
                                        if r["status"] == "accepted")

        threads = [threading.Thread(target=client, args=(files,)) for files in per_client]
        for thread in threads:
            thread.start()
        deadline = time.monotonic() + 120
        while len(accepted) < 40 and time.monotonic() < deadline:
            time.sleep(0.02)
        _kill(server)
        for thread in threads:
            thread.join(timeout=60)
    assert len(accepted) >= 40, f"too few uploads before the kill: {statuses}"
    assert all(code == 200 for code in statuses), statuses

    referenced = {d for (d,) in _rows(data_dir, "SELECT DISTINCT sha256 FROM image")}
    natural = set(_blob_files(data_dir)) - referenced  # what the kill left unreferenced
    # Plant what a crash between a blob write and its commit leaves, in case this kill did not.
    planted = hashlib.sha256(b"planted orphan").hexdigest()
    (data_dir / "images" / planted[:2]).mkdir(exist_ok=True)
    (data_dir / "images" / planted[:2] / planted).write_bytes(b"planted orphan")
    (data_dir / "images" / ".incoming-planted.tmp").write_bytes(b"half a write")
    old = time.time() - 5
    for path in [*_blob_files(data_dir).values(), *_incoming(data_dir)]:
        os.utime(path, (old, old))

    with _serve(data_dir, tmp_path / "second.log") as server:
        # The sweep ran before the server answered its first request.
        digests = _assert_rows_have_blobs(data_dir)
        assert set(_blob_files(data_dir)) == digests, "orphan blob files survived the sweep"
        assert not _incoming(data_dir), "interrupted blob writes survived the sweep"
        rows = dict(_rows(data_dir, "SELECT id, sha256 FROM image"))
        lost = [(image_id, digest) for image_id, digest in accepted
                if rows.get(image_id) != digest]
        assert not lost, f"{len(lost)} accepted uploads are gone: {lost[:5]}"
        for image_id, _ in accepted[:5]:
            response = httpx.get(f"{server.url}/api/v1/models/{model_id}/images/{image_id}",
                                 headers=_headers(), timeout=30)
            assert response.status_code == 200, response.text
        _wait_jobs_ended(server, data_dir)
    print(f"accepted={len(accepted)} rows={len(rows)} orphans_left_by_kill={len(natural)}")  # noqa: T201


def test_sigkill_during_a_training(tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    data_dir.mkdir()
    probe = [(path.name, path.read_bytes()) for path in
             sorted((tree_photos("hemlock")[0].parents[2] / "test").glob("*/*.jpg"))[:1]]
    with _serve(data_dir, tmp_path / "first.log", NANONET_EXTRACT_ON_UPLOAD="false") as server:
        model_id = _create_model(server)
        _originals(server, model_id)
        first = _wait_job(server, _train(server, model_id))
        assert first["status"] == "succeeded", first
        # New photos, so the next training has features to extract: time to kill it.
        for name, data in _variants(48, seed=1):
            assert _upload(server, model_id, _label_of(name), [(name, data)]).status_code == 200
        job_id = _train(server, model_id)
        deadline = time.monotonic() + 120
        # Killed while it extracts the new photos' features: from "saving" on, the new version
        # may already serve (a version serves before its learning curve is measured).
        while _job(server, job_id)["stage"] != "extracting_features":
            assert time.monotonic() < deadline, _job(server, job_id)
            time.sleep(0.01)
        _kill(server)
    [(status, stage)] = _rows(data_dir, f"SELECT status, stage FROM job WHERE id = '{job_id}'")
    assert (status, stage) == ("running", "extracting_features"), \
        f"the kill came too late to test anything: {status}, {stage}"

    with _serve(data_dir, tmp_path / "second.log") as server:
        response = httpx.post(f"{server.url}/api/v1/models/{model_id}/predict",
                              headers=_headers(), timeout=120,
                              files=[("files", (name, data, "image/jpeg"))
                                     for name, data in probe])
        assert response.status_code == 200, response.text
        assert response.json()["version"] == 1  # the previous version serves meanwhile
        job = _wait_job(server, job_id)
        assert job["status"] in ("succeeded", "failed"), job
        if job["status"] == "failed":
            assert job["error"], job
        else:
            assert job["attempts"] >= 2, job
        _wait_jobs_ended(server, data_dir)
        model = httpx.get(f"{server.url}/api/v1/models/{model_id}", headers=_headers(),
                          timeout=30).json()
        assert model["state"] != "training", model
        expected = 2 if job["status"] == "succeeded" else 1
        assert model["version"]["number"] == expected, model
    print(f"job after restart: {job['status']} attempts={job['attempts']} "  # noqa: T201
          f"error={job['error']!r}")


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A 20 MiB tmpfs; skipped where mounting is not permitted."""
    mount_point = tmp_path / "disk"
    mount_point.mkdir()
    try:
        subprocess.run(["mount", "-t", "tmpfs", "-o", "size=20m", "tmpfs", str(mount_point)],
                       check=True, capture_output=True, timeout=30)
    except (OSError, subprocess.SubprocessError) as exc:
        detail = getattr(exc, "stderr", b"") or b""
        pytest.skip(f"cannot mount a tmpfs here: {exc} {detail.decode(errors='replace')}")
    try:
        yield mount_point
    finally:
        subprocess.run(["umount", "-l", str(mount_point)], check=False, timeout=30)


def test_a_full_disk_is_507_and_nothing_is_stored_half(tmp_path: Path, small_disk: Path) -> None:
    data_dir = small_disk / "data"
    data_dir.mkdir()
    photos = _variants(160, scale=4.0, seed=2)  # about 200 kB each: 20 MiB is ~100 of them
    answers: list[tuple[int, str]] = []
    with _serve(data_dir, tmp_path / "server.log", NANONET_EXTRACT_ON_UPLOAD="false") as server:
        model_id = _create_model(server)
        for start in range(0, len(photos), 2):
            batch = photos[start:start + 2]
            response = _upload(server, model_id, _label_of(batch[0][0]), batch)
            code = response.json()["error"]["code"] if response.status_code != 200 else "ok"
            answers.append((response.status_code, code))
            if len([a for a in answers if a[0] == 507]) >= 3:
                break
        health = httpx.get(f"{server.url}/health", timeout=30)
    statuses = [status for status, _ in answers]
    assert 507 in statuses, f"the disk never filled: {answers}"
    assert all(status in (200, 507) for status in statuses), answers
    assert all(code == "insufficient_storage" for status, code in answers if status == 507)
    assert health.status_code < 500 or health.status_code == 503, health.text
    digests = _assert_rows_have_blobs(data_dir)
    assert not _incoming(data_dir), "a partial blob write was left"
    for digest, path in _blob_files(data_dir).items():  # unreferenced ones too: whole or none
        assert hashlib.sha256(path.read_bytes()).hexdigest() == digest
    accepted = statuses.count(200) * 2
    print(f"answers={answers} rows={len(digests)} accepted~{accepted}")  # noqa: T201


def test_sqlite_under_concurrent_writers(tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    data_dir.mkdir()
    seconds = 20.0
    problems: list[str] = []
    counts = {"uploads": 0, "trains": 0, "reads": 0}
    jobs: list[str] = []
    lock = threading.Lock()

    def check(what: str, response: httpx.Response) -> None:
        with lock:
            if response.status_code >= 500 or "locked" in response.text:
                problems.append(f"{what}: {response.status_code} {response.text[:300]}")

    with _serve(data_dir, tmp_path / "server.log") as server:
        models = [_create_model(server, f"trees-{n}") for n in range(3)]
        for model_id in models:
            _originals(server, model_id)
        stop = time.monotonic() + seconds

        def uploader(model_id: str, seed: int) -> None:
            files = _variants(400, seed=seed)
            for start in range(0, len(files), 4):
                if time.monotonic() > stop:
                    return
                batch = files[start:start + 4]
                check("upload", _upload(server, model_id, _label_of(batch[0][0]), batch))
                with lock:
                    counts["uploads"] += 1

        def trainer() -> None:
            turn = 0
            while time.monotonic() < stop:
                model_id = models[turn % len(models)]
                turn += 1
                response = httpx.post(f"{server.url}/api/v1/models/{model_id}/train",
                                      headers=_headers(), timeout=60)
                check("train", response)
                if response.status_code == 202:
                    with lock:
                        counts["trains"] += 1
                        jobs.append(response.json()["job_id"])
                time.sleep(1.0)

        def reader() -> None:
            while time.monotonic() < stop:
                for model_id in models:
                    check("list", httpx.get(
                        f"{server.url}/api/v1/models/{model_id}/images?per_page=50",
                        headers=_headers(), timeout=60))
                with lock:
                    counts["reads"] += 1

        threads = [threading.Thread(target=uploader, args=(m, n + 3))
                   for n, m in enumerate(models)]
        threads += [threading.Thread(target=trainer), threading.Thread(target=reader)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=seconds + 120)
        assert not problems, problems[:5]
        for job_id in set(jobs):
            job = _wait_job(server, job_id)
            assert job["status"] == "succeeded", job
        _wait_jobs_ended(server, data_dir)
        _assert_rows_have_blobs(data_dir)
    log = (tmp_path / "server.log").read_text(errors="replace")
    assert counts["uploads"] > 10 and counts["trains"] >= 3, counts
    print(f"counts={counts} locked_in_log={log.count('database is locked')}")  # noqa: T201
