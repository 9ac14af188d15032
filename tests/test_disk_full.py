"""A full disk is a 507 insufficient_storage, never a 500, and leaves nothing stored half
(the real thing, on a small tmpfs, is in tests/test_faults.py)."""

from __future__ import annotations

import errno
import io
import os
import sqlite3
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from sqlalchemy.exc import OperationalError

from app import storage
from app.errors import InsufficientStorage
from app.main import create_app
from app.storage import BlobStore, disk_full
from tests.conftest import bearer, create_model, make_settings, tree_photos, upload


def _no_space(*args: object) -> None:
    raise OSError(errno.ENOSPC, "No space left on device")


def test_a_blob_write_without_space_is_insufficient_storage(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    blobs = BlobStore(tmp_path / "images")
    monkeypatch.setattr(storage.os, "fsync", _no_space)
    with pytest.raises(InsufficientStorage), blobs.holding() as hold:
        hold.store(io.BytesIO(b"some photo"))
    assert list((tmp_path / "images").iterdir()) == []  # no partial file, no temp file


def test_other_write_errors_are_not_mistaken_for_a_full_disk(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def denied(*args: object) -> None:
        raise PermissionError(errno.EACCES, "Permission denied")

    monkeypatch.setattr(storage.os, "fsync", denied)
    with pytest.raises(PermissionError), BlobStore(tmp_path / "images").holding() as hold:
        hold.store(io.BytesIO(b"some photo"))


def test_full_database_errors_are_recognised() -> None:
    full = sqlite3.OperationalError("database or disk is full")
    assert disk_full(full)
    assert disk_full(OperationalError("COMMIT", {}, full))
    assert disk_full(OSError(errno.EDQUOT, "Disk quota exceeded"))
    assert not disk_full(OperationalError("COMMIT", {}, sqlite3.OperationalError(
        "database is locked")))
    assert not disk_full(RuntimeError("disk"))


def test_an_upload_without_space_is_507_and_stores_no_row(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with TestClient(create_app(make_settings(tmp_path, extract_on_upload=False))) as client:
        model_id = create_model(client)
        real_fsync = os.fsync
        monkeypatch.setattr(storage.os, "fsync", _no_space)
        response = upload(client, model_id, "hemlock", tree_photos("hemlock")[:2])
        monkeypatch.setattr(storage.os, "fsync", real_fsync)
        assert response.status_code == 507, response.text
        assert response.json()["error"]["code"] == "insufficient_storage"
        listed = client.get(f"/api/v1/models/{model_id}/images", headers=bearer()).json()
        assert listed["items"] == []
    assert not list((tmp_path / "images").glob("??/*"))
    assert not list((tmp_path / "images").glob(".incoming-*"))
