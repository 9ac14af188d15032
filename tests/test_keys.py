"""API keys: `nanonet keys list|revoke|rotate`, digests under the server secret, the bootstrap
key that rotates instead of making a second account, and the refusal of short ones."""

from __future__ import annotations

import hashlib
import hmac
import os
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from pydantic import ValidationError
from sqlalchemy import select, text

from app.cli import main
from app.config import Settings
from app.db.engine import make_engine, upgrade_database
from app.db.tables import Account, ApiKey, KeyHash
from app.errors import Conflict
from app.main import create_app
from app.runtime import Runtime, build_runtime
from app.security import SECRET_FILE, ServerSecret, sha256_digest
from app.services.accounts import ensure_bootstrap_key
from tests.conftest import API_KEY, bearer, make_settings
from tests.web.forms import sign_in

NEW_KEY = "nn_bootstrap_rotated_0123456789abcdef"


def runtime_of(client: TestClient) -> Runtime:
    return client.app.state.runtime  # type: ignore[attr-defined,no-any-return]


def keys(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    code = main(["keys", *args])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def key_rows(data: Path) -> list[ApiKey]:
    runtime = build_runtime(make_settings(data))
    try:
        with runtime.session_factory() as session:
            return list(session.scalars(select(ApiKey).order_by(ApiKey.created_at)))
    finally:
        runtime.engine.dispose()


@pytest.fixture
def data(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """The data dir the command line and the app share."""
    monkeypatch.setenv("NANONET_DATA_DIR", str(tmp_path))
    monkeypatch.delenv("NANONET_BOOTSTRAP_API_KEY", raising=False)
    return tmp_path


@pytest.fixture
def app(data: Path) -> Iterator[TestClient]:
    with TestClient(create_app(make_settings(data, bootstrap_api_key=None))) as client:
        yield client


def test_keys_list_revoke_and_rotate(app: TestClient, data: Path,
                                     capsys: pytest.CaptureFixture[str]) -> None:
    assert keys(capsys, "create", "alice")[0] == 0
    code, out, _ = keys(capsys, "create", "bob")
    bob_key = out.split()[-1]
    alice_key = key_rows(data)[0]
    code, out, _ = keys(capsys, "list")
    assert code == 0
    lines = out.splitlines()
    assert lines[0].split()[:3] == ["key", "id", "account"]
    assert any(alice_key.id in line and "alice" in line and "active" in line for line in lines)
    assert keys(capsys, "list", "--account", "bob")[1].count("\n") == 2  # header and bob's key

    bob = sign_in(TestClient(app.app), bob_key)  # a web session of bob's, to be ended
    assert app.get("/api/v1/models", headers=bearer(bob_key)).status_code == 200
    [bob_id] = [row.id for row in key_rows(data) if row.prefix == bob_key[:10]]
    code, out, _ = keys(capsys, "revoke", bob_id)
    assert code == 0 and "1 web sessions ended" in out
    refused = app.get("/api/v1/models", headers=bearer(bob_key))
    assert refused.status_code == 401 and refused.json()["error"]["code"] == "invalid_api_key"
    assert bob.get("/web/models", follow_redirects=False).status_code == 303
    listed = keys(capsys, "list", "--account", "bob")[1]
    assert "revoked" in listed and "active" not in listed
    assert keys(capsys, "revoke", bob_id)[0] == 2  # already revoked: said, nothing changes
    code, _, err = keys(capsys, "rotate", "no-such-key")
    assert code == 2 and "No API key has the id 'no-such-key'" in err

    code, out, _ = keys(capsys, "rotate", alice_key.id)
    assert code == 0
    new_key = out.split()[-1]
    assert app.get("/api/v1/models", headers=bearer(new_key)).status_code == 200
    by_prefix = {row.prefix: row for row in key_rows(data)}
    assert by_prefix[alice_key.prefix].revoked_at is not None
    assert by_prefix[new_key[:10]].account_id == alice_key.account_id  # the same account
    assert by_prefix[new_key[:10]].name == alice_key.name


def test_keys_are_hmac_sha256_under_the_server_secret(data: Path) -> None:
    settings = make_settings(data)
    with TestClient(create_app(settings)) as client:
        assert client.get("/api/v1/models", headers=bearer()).status_code == 200
    secret_file = data / SECRET_FILE
    assert secret_file.stat().st_mode & 0o777 == 0o600
    secret = secret_file.read_text().strip()
    assert len(secret) >= 32
    [row] = key_rows(data)
    expected = hmac.new(secret.encode(), b"api-key\0" + API_KEY.encode(), hashlib.sha256)
    assert row.key_hash == expected.hexdigest() and row.hash_scheme == KeyHash.HMAC_SHA256
    assert row.key_hash != sha256_digest(API_KEY)
    assert API_KEY not in (data / "nanonet.db").read_bytes().decode("latin-1")

    # The database alone opens nothing: another secret, and the same key is refused.
    secret_file.write_text("x" * 64 + "\n")
    with TestClient(create_app(make_settings(data, bootstrap_api_key=None))) as client:
        assert client.get("/api/v1/models", headers=bearer()).status_code == 401
    secret_file.write_text(secret + "\n")
    # NANONET_SECRET_KEY wins over the file (so processes that share no data dir can agree).
    configured = make_settings(data, bootstrap_api_key=None, secret_key=secret)
    secret_file.unlink()
    with TestClient(create_app(configured)) as client:
        assert client.get("/api/v1/models", headers=bearer()).status_code == 200
    assert not secret_file.exists()


def test_the_secret_file_is_made_once_even_by_processes_starting_together(
        tmp_path: Path) -> None:
    path = tmp_path / "data" / SECRET_FILE
    secrets = [ServerSecret(configured=None, path=path) for _ in range(8)]
    values: list[bytes] = []
    threads = [threading.Thread(target=lambda s=s: values.append(s.value)) for s in secrets]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(set(values)) == 1 and path.read_bytes().strip() == values[0]
    assert [p.name for p in path.parent.iterdir()] == [SECRET_FILE]  # no temporary file left


def test_a_short_secret_file_is_refused(tmp_path: Path) -> None:
    path = tmp_path / SECRET_FILE
    path.write_text("short\n")
    with pytest.raises(RuntimeError, match="holds no usable secret"):
        _ = ServerSecret(configured=None, path=path).value


def test_changing_the_bootstrap_key_rotates_it(data: Path) -> None:
    with TestClient(create_app(make_settings(data))) as client:
        model = client.post("/api/v1/models", headers=bearer(),
                            json={"name": "trees", "categories": ["a", "b"]}).json()["id"]
        browser = sign_in(TestClient(client.app), API_KEY)
    with TestClient(create_app(make_settings(data, bootstrap_api_key=NEW_KEY))) as client:
        assert client.get("/api/v1/models", headers=bearer()).status_code == 401
        mine = client.get("/api/v1/models", headers=bearer(NEW_KEY)).json()["models"]
        assert [m["id"] for m in mine] == [model]  # the same account, with its models
        assert browser.get("/web/models", follow_redirects=False).status_code == 303
        with runtime_of(client).session_factory() as session:
            accounts = list(session.scalars(select(Account)))
        assert [(a.name, a.is_bootstrap) for a in accounts] == [("bootstrap", True)]
    # Back to the old value: it was revoked, so the start refuses it rather than revive it.
    with pytest.raises(Conflict, match="revoked"), TestClient(create_app(make_settings(data))):
        pass
    with TestClient(create_app(make_settings(data, bootstrap_api_key=NEW_KEY))) as client:
        assert client.get("/api/v1/models", headers=bearer(NEW_KEY)).status_code == 200


def test_the_bootstrap_key_cannot_be_another_accounts(data: Path,
                                                      capsys: pytest.CaptureFixture[str]) -> None:
    with TestClient(create_app(make_settings(data))):
        pass
    alices = keys(capsys, "create", "alice")[1].split()[-1]
    runtime = build_runtime(make_settings(data))
    try:
        with runtime.session_factory() as session, pytest.raises(
                Conflict, match="a key of the account 'alice', not of the bootstrap account"):
            ensure_bootstrap_key(session, key=alices)
    finally:
        runtime.engine.dispose()
    with TestClient(create_app(make_settings(data, bootstrap_api_key=None))) as client:
        assert client.get("/api/v1/models", headers=bearer(alices)).status_code == 200
        assert client.get("/api/v1/models", headers=bearer()).status_code == 200


def test_a_short_bootstrap_key_is_refused_at_start(
        data: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(ValidationError, match="at least 32"):
        Settings(data_dir=data, bootstrap_api_key="nn_short")  # type: ignore[arg-type]
    import uvicorn

    monkeypatch.setattr(uvicorn, "run", lambda *a, **k: pytest.fail("served with a short key"))
    monkeypatch.setenv("NANONET_BOOTSTRAP_API_KEY", "nn_short_key")
    assert main(["serve"]) == 2
    err = capsys.readouterr().err
    assert "NANONET_BOOTSTRAP_API_KEY is 12 characters; it must be at least 32" in err
    assert "Traceback" not in err
    monkeypatch.setenv("NANONET_SECRET_KEY", "too short")
    monkeypatch.delenv("NANONET_BOOTSTRAP_API_KEY")
    assert main(["keys", "list"]) == 2
    assert "NANONET_SECRET_KEY is 9 characters" in capsys.readouterr().err


def test_keys_from_before_the_server_secret_work_and_are_rehashed(tmp_path: Path) -> None:
    """Migration 0008 keeps old SHA-256 rows: they authenticate, then are stored as HMAC."""
    data = tmp_path / "data"
    data.mkdir()
    url = f"sqlite:///{data / 'nanonet.db'}"
    upgrade_database(url, "0007")
    engine = make_engine(url)
    with engine.begin() as connection:
        for account, name, key in (("a1", "bootstrap", API_KEY), ("a2", "alice", "nn_" + "a" * 40),
                                   ("a3", "bootstrap", "nn_" + "b" * 40)):
            connection.execute(text("INSERT INTO account (id, name, created_at) VALUES "
                                    "(:id, :name, '2026-01-01 00:00:00')"),
                               {"id": account, "name": name})
            connection.execute(text(
                "INSERT INTO api_key (id, account_id, key_hash, prefix, name, created_at) VALUES "
                "(:key_id, :id, :hash, :prefix, 'default', '2026-01-01 00:00:00')"),
                {"key_id": "k" + account, "id": account, "hash": sha256_digest(key),
                 "prefix": key[:10]})
    engine.dispose()
    upgrade_database(url)
    alice = "nn_" + "a" * 40
    with TestClient(create_app(make_settings(data))) as client:  # bootstrap: API_KEY
        for key in (API_KEY, alice):
            assert client.get("/api/v1/models", headers=bearer(key)).status_code == 200
        with runtime_of(client).session_factory() as session:
            rows = {row.id: row for row in session.scalars(select(ApiKey))}
            bootstrap = [a.id for a in session.scalars(select(Account).where(Account.is_bootstrap))]
    assert bootstrap == ["a1"]  # the oldest account named bootstrap, not the second one
    assert rows["ka1"].hash_scheme == rows["ka2"].hash_scheme == KeyHash.HMAC_SHA256
    assert rows["ka1"].key_hash != sha256_digest(API_KEY)
    assert rows["ka3"].hash_scheme == KeyHash.SHA256  # not used yet: not rehashed yet
    assert os.stat(data / SECRET_FILE).st_mode & 0o077 == 0
