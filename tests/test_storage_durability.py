"""Nothing is lost between the blob store and the database: a crash leaves at most files no
row names (swept at the next start once they are old), concurrent uploads of the same bytes are
one row and a duplicate, and a delete never takes bytes another upload is about to use.

Races are made deterministic by holding an upload at its INSERT of the image rows (a SQLAlchemy
cursor event on the real engine), the moment its blobs are on disk and its rows not committed.
"""

from __future__ import annotations

import hashlib
import os
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import event, func, select

from app.db.tables import Image
from app.main import create_app
from app.runtime import Runtime
from app.services.accounts import create_account
from app.services.images import sweep_unused_blobs
from tests.conftest import (
    DATASETS,
    OTHER_KEY,
    bearer,
    create_model,
    make_settings,
    tree_photos,
    upload,
)

PHOTOS = tree_photos("hemlock")
AN_HOUR_AGO = time.time() - 3600 - 60


def runtime_of(client: TestClient) -> Runtime:
    return client.app.state.runtime  # type: ignore[attr-defined,no-any-return]


def digest_of(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def blobs_on_disk(runtime: Runtime) -> set[str]:
    return {digest for digest, _ in runtime.blobs.stored()}


def image_rows(runtime: Runtime) -> list[tuple[str, str]]:
    with runtime.session_factory() as session:
        return [(row.model_id, row.sha256) for row in session.scalars(select(Image))]


@contextmanager
def at_image_insert(runtime: Runtime, action: Callable[[], None]) -> Iterator[None]:
    """Run `action` in the thread of every INSERT of image rows, just before it executes."""

    def before(_conn: Any, _cursor: Any, statement: str, *_: Any) -> None:
        if statement.startswith("INSERT INTO image ("):
            action()

    event.listen(runtime.engine, "before_cursor_execute", before)
    try:
        yield
    finally:
        event.remove(runtime.engine, "before_cursor_execute", before)


@pytest.fixture
def client(tmp_path: Path) -> Iterator[TestClient]:
    settings = make_settings(tmp_path / "data", extract_on_upload=False)
    with TestClient(create_app(settings), raise_server_exceptions=False) as test_client:
        yield test_client


def age(runtime: Runtime, digests: set[str]) -> None:
    for digest in digests:
        os.utime(runtime.blobs.path(digest), (AN_HOUR_AGO, AN_HOUR_AGO))


class Crash(Exception):
    """Stands for the process dying between its blob writes and its commit."""


def crash() -> None:
    raise Crash


def test_a_crash_before_the_commit_leaves_only_unnamed_files_and_the_next_start_sweeps_them(
        tmp_path: Path) -> None:
    settings = make_settings(tmp_path / "data", extract_on_upload=False)
    named, lost = digest_of(PHOTOS[0]), {digest_of(photo) for photo in PHOTOS[1:3]}
    with TestClient(create_app(settings), raise_server_exceptions=False) as client:
        runtime = runtime_of(client)
        model_id = create_model(client)
        assert upload(client, model_id, "hemlock", PHOTOS[:1]).status_code == 200
        with at_image_insert(runtime, crash):
            assert upload(client, model_id, "hemlock", PHOTOS[1:3]).status_code == 500
        assert image_rows(runtime) == [(model_id, named)]  # no row half-written
        assert blobs_on_disk(runtime) == lost | {named}  # the files, named by no row
        assert sweep_unused_blobs(runtime) == 0  # young: they could be an upload in flight
        age(runtime, lost | {named})
    with TestClient(create_app(settings)) as restarted:  # the startup sweep
        runtime = runtime_of(restarted)
        assert blobs_on_disk(runtime) == {named}  # the one a row names is kept, old as it is
        again = upload(restarted, model_id, "hemlock", PHOTOS[1:3])
        assert [r["status"] for r in again.json()["results"]] == ["accepted", "accepted"]
        image_id = again.json()["results"][0]["image_id"]
        original = restarted.get(f"/api/v1/models/{model_id}/images/{image_id}/original",
                                 headers=bearer())
        assert original.content == PHOTOS[1].read_bytes()


def test_an_interrupted_blob_write_is_swept_once_old(client: TestClient) -> None:
    runtime = runtime_of(client)
    leftover = runtime.blobs.root / ".incoming-crashed.tmp"
    leftover.write_bytes(b"half a photo")
    sweep_unused_blobs(runtime)
    assert leftover.exists()
    os.utime(leftover, (AN_HOUR_AGO, AN_HOUR_AGO))
    sweep_unused_blobs(runtime)
    assert not leftover.exists()


def test_the_sweep_leaves_the_blobs_of_an_upload_in_flight(tmp_path: Path) -> None:
    settings = make_settings(tmp_path / "data", extract_on_upload=False, orphan_grace_seconds=0)
    with TestClient(create_app(settings)) as client:
        runtime = runtime_of(client)
        model_id = create_model(client)
        release = threading.Event()
        held = threading.Event()

        def hold() -> None:
            held.set()
            release.wait(timeout=10)

        with at_image_insert(runtime, hold), ThreadPoolExecutor(max_workers=2) as pool:
            uploading = pool.submit(upload, client, model_id, "hemlock", PHOTOS[:2])
            assert held.wait(timeout=30)
            assert blobs_on_disk(runtime) == {digest_of(p) for p in PHOTOS[:2]}  # unnamed yet
            sweeping = pool.submit(sweep_unused_blobs, runtime)  # grace 0: they are candidates
            time.sleep(0.5)
            assert not sweeping.done()  # it waits for the upload's hold on those blobs
            release.set()
            assert uploading.result(timeout=30).status_code == 200
            assert sweeping.result(timeout=30) == 0
        assert blobs_on_disk(runtime) == {digest_of(p) for p in PHOTOS[:2]}
        assert len(image_rows(runtime)) == 2


def test_deleting_a_model_keeps_the_bytes_another_account_is_uploading(
        client: TestClient) -> None:
    runtime = runtime_of(client)
    with runtime.session_factory() as session:
        create_account(session, name="other", key=OTHER_KEY)
    photo = PHOTOS[0]
    doomed = create_model(client, name="doomed")
    assert upload(client, doomed, "hemlock", [photo]).status_code == 200
    theirs = create_model(client, name="theirs", key=OTHER_KEY)
    deleted = threading.Event()
    held = threading.Event()

    def hold() -> None:  # the other account's upload: blob stored, row not yet inserted
        held.set()
        deleted.wait(timeout=2)  # the delete may be waiting for this upload: then go on

    with at_image_insert(runtime, hold), ThreadPoolExecutor(max_workers=2) as pool:
        uploading = pool.submit(upload, client, theirs, "hemlock", [photo], OTHER_KEY)
        assert held.wait(timeout=30)

        def delete_doomed() -> int:
            status = client.delete(f"/api/v1/models/{doomed}", headers=bearer()).status_code
            deleted.set()
            return status

        deleting = pool.submit(delete_doomed)
        assert deleting.result(timeout=60) == 204
        answer = uploading.result(timeout=60)
    assert answer.status_code == 200, answer.text
    [result] = answer.json()["results"]
    assert result["status"] == "accepted"
    assert runtime.blobs.path(digest_of(photo)).exists()
    original = client.get(f"/api/v1/models/{theirs}/images/{result['image_id']}/original",
                          headers=bearer(OTHER_KEY))
    assert original.status_code == 200 and original.content == photo.read_bytes()


def meet_at_insert(parties: int) -> Callable[[], None]:
    """Hold each INSERT of image rows until `parties` uploads are there (or 1 s has passed), so
    concurrent uploads all read before any of them writes, if nothing keeps them apart."""
    barrier = threading.Barrier(parties)

    def meet() -> None:
        with suppress(threading.BrokenBarrierError):
            barrier.wait(timeout=1)

    return meet


def test_the_same_bytes_uploaded_twice_at_once_are_one_row_and_one_duplicate(
        client: TestClient) -> None:
    runtime = runtime_of(client)
    model_id = create_model(client)
    with at_image_insert(runtime, meet_at_insert(2)), ThreadPoolExecutor(max_workers=2) as pool:
        answers = list(pool.map(lambda _: upload(client, model_id, "hemlock", PHOTOS[:1]),
                                range(2)))
    assert [a.status_code for a in answers] == [200, 200], [a.text for a in answers]
    results = [a.json()["results"][0] for a in answers]
    assert sorted(r["status"] for r in results) == ["accepted", "duplicate"]
    assert results[0]["image_id"] == results[1]["image_id"]
    assert len(image_rows(runtime)) == 1


def test_the_same_bytes_sent_to_every_category_at_once_never_fail(client: TestClient) -> None:
    runtime = runtime_of(client)
    categories = ("hemlock", "japanese_cherry", "oak", "elm")
    model_id = create_model(client, categories=categories)
    targets = [*categories, *categories]  # each category twice, all at once

    def send(category: str):  # type: ignore[no-untyped-def]
        return upload(client, model_id, category, PHOTOS[:1])

    with at_image_insert(runtime, meet_at_insert(len(targets))), \
            ThreadPoolExecutor(max_workers=len(targets)) as pool:
        answers = list(pool.map(send, targets))
    assert [a.status_code for a in answers] == [200] * len(targets), [a.text for a in answers]
    statuses = [a.json()["results"][0]["status"] for a in answers]
    assert sorted(statuses) == ["accepted"] * 4 + ["duplicate"] * 4  # one copy per category
    with runtime.session_factory() as session:
        copies = session.scalar(select(func.count()).select_from(Image)
                                .where(Image.model_id == model_id))
    assert copies == 4
    model = client.get(f"/api/v1/models/{model_id}", headers=bearer()).json()
    assert {c["name"]: c["count"] for c in model["categories"]} == dict.fromkeys(categories, 1)


def test_other_writers_are_not_kept_waiting_while_a_large_upload_decodes(
        client: TestClient) -> None:
    runtime = runtime_of(client)
    model_id = create_model(client, categories=("ants", "bees"))
    photos = sorted((DATASETS / "hymenoptera" / "train" / "ants").glob("*.jpg"))[:60]
    database = runtime.settings.resolved_database_url.removeprefix("sqlite:///")
    refused: list[str] = []
    writes = 0
    done = threading.Event()

    def write_meanwhile() -> None:  # another writer, ready to wait 0.2 s for the lock at most
        nonlocal writes
        other = sqlite3.connect(database, timeout=0.2, isolation_level=None)
        try:
            while not done.is_set():
                try:
                    other.execute("BEGIN IMMEDIATE")
                    other.execute("COMMIT")
                    writes += 1
                except sqlite3.OperationalError as exc:
                    refused.append(str(exc))
                time.sleep(0.01)
        finally:
            other.close()

    writer = threading.Thread(target=write_meanwhile)
    writer.start()
    try:
        started = time.monotonic()
        response = upload(client, model_id, "ants", photos)
        seconds = time.monotonic() - started
    finally:
        done.set()
        writer.join()
    assert response.status_code == 200 and response.json()["accepted"] == len(photos)
    assert writes > 10 * seconds, (writes, seconds)  # it kept writing the whole time
    assert refused == []  # and never met the lock for longer than 0.2 s
