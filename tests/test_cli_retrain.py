"""`nanonet retrain --all`: every model trained again, before/after table, worse ones kept aside."""

from __future__ import annotations

from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from app.cli import main
from app.main import create_app
from app.services.accounts import create_account
from tests.conftest import (
    API_KEY,
    OTHER_KEY,
    bearer,
    create_model,
    make_settings,
    tree_photos,
    upload,
    wait_for_job,
)

pytestmark = pytest.mark.slow


def _model(client: TestClient, name: str, key: str, per_class: int) -> str:
    model_id = create_model(client, name=name, key=key)
    for label in ("hemlock", "japanese_cherry"):
        response = upload(client, model_id, label, tree_photos(label)[:per_class], key=key)
        assert response.status_code == 200, response.text
    return model_id


def test_retrain_all_prints_before_and_after_and_keeps_worse_versions_aside(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    data = tmp_path / "data"
    settings = make_settings(data)
    with TestClient(create_app(settings)) as client:
        runtime = client.app.state.runtime  # type: ignore[attr-defined]
        with runtime.session_factory() as session:
            create_account(session, name="bob", key=OTHER_KEY)
        steady = _model(client, "steady", API_KEY, per_class=8)
        spoiled = _model(client, "spoiled", OTHER_KEY, per_class=8)
        never_trained = create_model(client, name="empty", key=OTHER_KEY)
        for model_id, key in ((steady, API_KEY), (spoiled, OTHER_KEY)):
            job = client.post(f"/api/v1/models/{model_id}/train", headers=bearer(key)).json()
            assert wait_for_job(client, job["job_id"], key=key)["status"] == "succeeded"
        # Swap half the labels of one model: its retraining must score worse and stay aside.
        items = client.get(f"/api/v1/models/{spoiled}/images?per_page=200",
                           headers=bearer(OTHER_KEY)).json()["items"]
        for item in items[::2]:
            other = "hemlock" if item["category"] == "japanese_cherry" else "japanese_cherry"
            client.patch(f"/api/v1/models/{spoiled}/images/{item['id']}",
                         json={"category": other}, headers=bearer(OTHER_KEY))

    for name, value in (("NANONET_DATA_DIR", str(data)), ("NANONET_BACKBONES", "mobilenet_v2"),
                        ("NANONET_AUGMENT_VIEWS", "0"),
                        ("NANONET_CREATE_FIRST_ACCOUNT", "false")):
        monkeypatch.setenv(name, value)
    assert main(["retrain", "--all", "--activate", "if_better"]) == 0
    out = capsys.readouterr().out
    lines = {line.split()[0]: line for line in out.splitlines() if line.strip()}
    assert lines["model"].split()[:8] == ["model", "account", "before", "cv", "acc", "after",
                                          "cv", "acc"]
    assert " v1 " in lines["steady"] and " v2 " in lines["steady"]
    assert "  yes  " in lines["steady"]
    assert " v2 " in lines["spoiled"] and "  no  " in lines["spoiled"]
    assert "which stays active" in lines["spoiled"]
    assert "skipped" in lines["empty"]
    assert "3 models: 1 new versions went live, 1 kept aside, 1 skipped, 0 failed" in out

    with TestClient(create_app(settings)) as client:
        spoiled_model = client.get(f"/api/v1/models/{spoiled}", headers=bearer(OTHER_KEY)).json()
        assert spoiled_model["version"]["number"] == 1
        steady_model = client.get(f"/api/v1/models/{steady}", headers=bearer()).json()
        assert steady_model["version"]["number"] == 2
        empty = client.get(f"/api/v1/models/{never_trained}", headers=bearer(OTHER_KEY)).json()
        assert empty["version"] is None

    # One account only; an unknown one is an error, not an empty table.
    assert main(["retrain", "--all", "--account", "bob", "--activate", "never"]) == 0
    out = capsys.readouterr().out
    assert "steady" not in out and "2 models:" in out
    assert main(["retrain", "--all", "--account", "nobody"]) == 2
    assert "No account is called 'nobody'" in capsys.readouterr().err
