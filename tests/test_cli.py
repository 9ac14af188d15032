from __future__ import annotations

from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from app.cli import main
from app.main import create_app
from tests.conftest import bearer, make_settings


def test_keys_create_prints_a_working_key_as_last_word(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv("NANONET_DATA_DIR", str(tmp_path))
    assert main(["keys", "create", "alice"]) == 0
    key = capsys.readouterr().out.split()[-1]
    settings = make_settings(tmp_path, bootstrap_api_key=None)
    with TestClient(create_app(settings)) as client:
        assert client.get("/api/v1/models", headers=bearer(key)).status_code == 200


def test_first_start_creates_an_account_and_says_where_its_key_is(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    settings = make_settings(tmp_path, bootstrap_api_key=None, create_first_account=True)
    with TestClient(create_app(settings)) as client:
        out = capsys.readouterr().out
        kept = tmp_path / "initial_api_key.txt"
        key = kept.read_text().strip()
        assert key in out and str(kept) in out
        assert kept.stat().st_mode & 0o077 == 0
        assert client.get("/api/v1/models", headers=bearer(key)).status_code == 200
    with TestClient(create_app(settings)):
        assert "API key" not in capsys.readouterr().out  # only on the very first start


def test_bootstrap_key_is_idempotent(tmp_path: Path) -> None:
    for _ in range(2):
        with TestClient(create_app(make_settings(tmp_path))) as client:
            assert client.get("/api/v1/models", headers=bearer()).status_code == 200
