from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path

import httpx2 as httpx
import pytest
from fastapi.testclient import TestClient

from app.cli import main
from app.client import sha256_of
from app.main import create_app
from bench.server import Server, embedded_server, free_port
from tests.conftest import BAD_INPUTS, DATASETS, bearer, make_settings, tree_photos


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


# `nanonet import` and `export-images` against a real `nanonet serve`, over HTTP only.

HYMENOPTERA_TRAIN = DATASETS / "hymenoptera" / "train"
SERVER_ENV = {"NANONET_BACKBONES": "mobilenet_v2", "NANONET_AUGMENT_VIEWS": "0",
              # no backbone is needed here: leave the cores to decoding uploads
              "NANONET_EXTRACT_ON_UPLOAD": "false"}


@pytest.fixture(scope="module")
def server() -> Iterator[Server]:
    with embedded_server(SERVER_ENV) as running:
        yield running


@pytest.fixture
def remote(server: Server, monkeypatch: pytest.MonkeyPatch) -> Server:
    monkeypatch.setenv("NANONET_URL", server.url)
    monkeypatch.setenv("NANONET_API_KEY", server.key)
    return server


def new_model(server: Server, categories: list[str]) -> str:
    response = httpx.post(f"{server.url}/api/v1/models", headers=bearer(server.key),
                          json={"name": "cli", "categories": categories})
    assert response.status_code == 201, response.text
    return str(response.json()["id"])


def counts(server: Server, model_id: str) -> dict[str, int]:
    response = httpx.get(f"{server.url}/api/v1/models/{model_id}", headers=bearer(server.key))
    return {c["name"]: c["count"] for c in response.json()["categories"]}


def pool_size(server: Server, model_id: str) -> int:
    response = httpx.get(f"{server.url}/api/v1/models/{model_id}/images",
                         params={"labelled": "false"}, headers=bearer(server.key))
    assert response.status_code == 200, response.text
    return int(response.json()["total"])


def digests_in(folder: Path) -> dict[str, set[str]]:
    return {sub.name: {sha256_of(p.read_bytes()) for p in sub.iterdir() if p.is_file()}
            for sub in folder.iterdir() if sub.is_dir()}


def test_an_interrupted_import_resumes_to_exactly_every_image(
        remote: Server, capsys: pytest.CaptureFixture[str]) -> None:
    model_id = new_model(remote, ["ants", "wasps"])
    assert main(["import", "--model", model_id, "--limit", "40", str(HYMENOPTERA_TRAIN)]) == 0
    first = capsys.readouterr()
    assert counts(remote, model_id) == {"ants": 40, "wasps": 0, "bees": 0}
    assert "created category 'bees'" in first.out
    assert "imported 40 files, skipped 0" in first.out

    assert main(["import", "--model", model_id, str(HYMENOPTERA_TRAIN)]) == 0
    second = capsys.readouterr()
    assert counts(remote, model_id) == {"ants": 124, "wasps": 0, "bees": 121}
    assert "created category" not in second.out
    assert "imported 205 files, skipped 40 already there, 0 failed" in second.out


def test_export_then_import_into_another_model_gives_the_same_images(
        remote: Server, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    source = tmp_path / "source"
    for name in ("hemlock", "japanese cherry"):
        (source / name).mkdir(parents=True)
        for photo in tree_photos(name.replace(" ", "_"))[:5]:
            (source / name / photo.name).write_bytes(photo.read_bytes())
    (source / "japanese cherry" / "0.jpg").write_bytes(tree_photos("hemlock")[6].read_bytes())
    (source / "_unlabelled").mkdir()
    for photo in tree_photos("japanese_cherry")[7:9]:
        (source / "_unlabelled" / photo.name).write_bytes(photo.read_bytes())
    model_id = new_model(remote, ["hemlock", "empty one"])
    assert main(["import", "--model", model_id, "--batch-size", "4", str(source)]) == 0
    assert counts(remote, model_id) == {"hemlock": 5, "empty one": 0, "japanese cherry": 6}
    assert pool_size(remote, model_id) == 2

    exported = tmp_path / "exported"
    assert main(["export-images", "--model", model_id, str(exported)]) == 0
    assert "exported 13 files" in capsys.readouterr().out
    assert digests_in(exported) == {**digests_in(source), "empty one": set()}
    assert main(["export-images", "--model", model_id, str(exported)]) == 0  # resumes
    assert "exported 0 files, skipped 13 already there" in capsys.readouterr().out

    copy_id = new_model(remote, ["hemlock", "oak"])
    assert main(["import", "--model", copy_id, str(exported)]) == 0
    assert counts(remote, copy_id) == {"hemlock": 5, "oak": 0, "empty one": 0,
                                       "japanese cherry": 6}
    assert pool_size(remote, copy_id) == 2


def test_bad_files_are_listed_at_the_end_and_the_rest_goes_in(
        remote: Server, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "hemlock").mkdir()
    for photo in tree_photos("hemlock")[:3]:
        (tmp_path / "hemlock" / photo.name).write_bytes(photo.read_bytes())
    # First in name order, so they make one batch that the server refuses as a whole.
    for name in ("truncated.jpg", "not_an_image.jpg"):
        (tmp_path / "hemlock" / f"0_{name}").write_bytes((BAD_INPUTS / name).read_bytes())
    (tmp_path / "unknown").mkdir()
    (tmp_path / "unknown" / "a.jpg").write_bytes(tree_photos("hemlock")[4].read_bytes())
    model_id = new_model(remote, ["hemlock", "japanese_cherry"])
    assert main(["import", "--model", model_id, "--batch-size", "2", str(tmp_path)]) == 1
    out, err = capsys.readouterr()
    assert "imported 3 files, skipped 0 already there, 3 failed" in out
    failed = err[err.index("failed:"):]
    assert f"{tmp_path / 'hemlock' / '0_not_an_image.jpg'}: The file is not a recognisable" \
        in failed  # each file's own reason, not the batch's
    assert f"{tmp_path / 'hemlock' / '0_truncated.jpg'}: " in failed
    assert f"{tmp_path / 'unknown' / 'a.jpg'}: category 'unknown': " in failed
    assert "reserved" in failed
    assert counts(remote, model_id) == {"hemlock": 3, "japanese_cherry": 0}


def test_wrong_key_unknown_model_and_no_server_say_so(
        remote: Server, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    model_id = new_model(remote, ["hemlock", "japanese_cherry"])
    for command in ("import", "export-images"):
        assert main([command, "--model", model_id, "--key", "nn_wrong", str(tmp_path)]) == 2
        assert "refused the API key" in capsys.readouterr().err
        assert main([command, "--model", "nope", str(tmp_path)]) == 2
        assert "No model with id 'nope'" in capsys.readouterr().err
        assert main([command, "--model", model_id, "--url", f"http://127.0.0.1:{free_port()}",
                     str(tmp_path)]) == 2
        assert "Cannot reach the NanoNet server at http://127.0.0.1:" in capsys.readouterr().err
    monkeypatch.delenv("NANONET_API_KEY")
    assert main(["import", "--model", model_id, str(tmp_path)]) == 2
    assert "no API key" in capsys.readouterr().err


def test_export_keeps_two_images_of_one_name_and_writes_only_inside_dir(
        remote: Server, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setitem(sys.modules, "tqdm", None)  # the plain counter stands in for its bar
    model_id = new_model(remote, ["hemlock", "japanese_cherry"])
    first, second, third = tree_photos("hemlock")[:3]
    for name, photo in (("same.jpg", first), ("same.jpg", second), ("../../up.jpg", third)):
        response = httpx.post(f"{remote.url}/api/v1/models/{model_id}/images",
                              data={"category": "hemlock"}, headers=bearer(remote.key),
                              files=[("files", (name, photo.read_bytes(), "image/jpeg"))])
        assert response.json()["accepted"] == 1, response.text
    exported = tmp_path / "deep" / "exported"
    assert main(["export-images", "--model", model_id, str(exported)]) == 0
    written = sorted(str(p.relative_to(tmp_path)) for p in tmp_path.rglob("*") if p.is_file())
    assert len(written) == 3 and all(p.startswith("deep/exported/hemlock/") for p in written)
    assert digests_in(exported)["hemlock"] == {sha256_of(p.read_bytes())
                                               for p in (first, second, third)}
    assert "deep/exported/hemlock/same.jpg" in written
    assert "deep/exported/hemlock/up.jpg" in written
    assert "\rexported 3/3" in capsys.readouterr().err
    assert main(["export-images", "--model", model_id, str(exported)]) == 0
    assert "exported 0 files, skipped 3 already there" in capsys.readouterr().out
