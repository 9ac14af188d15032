"""GET /models/{id}/export?format=onnx: one ONNX file that answers as /predict does.

The file is run by docs/onnx_snippet.py, the README's client snippet (onnxruntime, numpy and
Pillow only), on real photos, and its probabilities are compared with the server's.
"""

from __future__ import annotations

import re
import runpy
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import pytest
from fastapi.testclient import TestClient

from app.main import create_app
from app.ml import onnx_export
from app.services.accounts import create_account
from tests.conftest import (
    DATASETS,
    OTHER_KEY,
    ROOT,
    TREES,
    bearer,
    create_model,
    files_of,
    make_settings,
    tree_photos,
    upload,
    wait_for_job,
)

pytestmark = pytest.mark.slow

SNIPPET = ROOT / "docs" / "onnx_snippet.py"
HYMENOPTERA = DATASETS / "hymenoptera" / "val"
PROBES = [TREES / "test" / "hemlock" / "test_image.jpg", *tree_photos("japanese_cherry")[:2],
          *sorted((HYMENOPTERA / "ants").glob("*.jpg"))[:3],
          *sorted((HYMENOPTERA / "bees").glob("*.jpg"))[:3]]
TOLERANCE = 1e-4  # the server rounds probabilities to 6 decimals


class Trained:
    def __init__(self, client: TestClient, model_id: str) -> None:
        self.client = client
        self.model_id = model_id

    def export(self, query: str = "", key: str | None = None) -> Any:
        return self.client.get(f"/api/v1/models/{self.model_id}/export{query}",
                               headers=bearer(key) if key else bearer())


def _train(client: TestClient, model_id: str) -> None:
    response = client.post(f"/api/v1/models/{model_id}/train", headers=bearer())
    assert response.status_code == 202, response.text
    job = wait_for_job(client, response.json()["job_id"])
    assert job["status"] == "succeeded", job


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Trained]:
    """A MobileNetV2 model on the tree photos, trained twice: version 1 on all but the last
    three photos of each category, version 2 (active) on all of them."""
    settings = make_settings(tmp_path_factory.mktemp("export") / "data")
    with TestClient(create_app(settings)) as client:
        model_id = create_model(client, name="Trees: hemlock / cherry")
        for label in ("hemlock", "japanese_cherry"):
            assert upload(client, model_id, label, tree_photos(label)[:-3]).status_code == 200
        _train(client, model_id)
        for label in ("hemlock", "japanese_cherry"):
            assert upload(client, model_id, label, tree_photos(label)[-3:]).status_code == 200
        _train(client, model_id)
        yield Trained(client, model_id)


def run_snippet(model: Path, photos: list[Path], monkeypatch: pytest.MonkeyPatch
                ) -> dict[str, Any]:
    """Run docs/onnx_snippet.py as a script on `photos`; return its globals."""
    monkeypatch.setattr(sys, "argv", [str(SNIPPET), str(model), *map(str, photos)])
    return runpy.run_path(str(SNIPPET), run_name="__main__")


def server_probabilities(trained: Trained, query: str = "") -> tuple[list[str], np.ndarray]:
    response = trained.client.post(f"/api/v1/models/{trained.model_id}/predict{query}",
                                   files=files_of(*PROBES), headers=bearer())
    assert response.status_code == 200, response.text
    results = response.json()["results"]
    labels = sorted(p["label"] for p in results[0]["predictions"])
    rows = [{p["label"]: p["probability"] for p in r["predictions"]} for r in results]
    return labels, np.array([[row[label] for label in labels] for row in rows])


def test_the_export_answers_as_predict_does(trained: Trained, tmp_path: Path,
                                            monkeypatch: pytest.MonkeyPatch,
                                            capsys: pytest.CaptureFixture[str]) -> None:
    response = trained.export("?format=onnx")
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == "application/octet-stream"
    assert response.headers["content-disposition"] == (
        'attachment; filename="trees-hemlock-cherry-v2.onnx"')
    path = tmp_path / "model.onnx"
    path.write_bytes(response.content)

    model = onnx.load(str(path))
    meta = {p.key: p.value for p in model.metadata_props}
    assert meta["model_id"] == trained.model_id and meta["version"] == "2"
    assert meta["backbone"] == "mobilenet_v2" and meta["nanonet_version"]
    assert [i.name for i in model.graph.input] == ["input"]
    dims = model.graph.input[0].type.tensor_type.shape.dim
    assert dims[0].dim_param and [d.dim_value for d in dims[1:]] == [3, 224, 224]

    ran = run_snippet(path, PROBES, monkeypatch)
    printed = capsys.readouterr().out.splitlines()
    assert len(printed) == len(PROBES) and printed[0].startswith(str(PROBES[0]))
    assert ran["labels"] == ["hemlock", "japanese_cherry"]  # label order, from the metadata
    labels, expected = server_probabilities(trained)
    ours = ran["probabilities"][:, [ran["labels"].index(label) for label in labels]]
    difference = float(np.abs(ours - expected).max())
    print(f"max abs difference from /predict: {difference:.2e}")  # noqa: T201  (for -s runs)
    assert difference <= TOLERANCE
    assert (ours.argmax(axis=1) == expected.argmax(axis=1)).all()


def test_version_picks_that_versions_file_and_the_file_goes_with_it(
        trained: Trained, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    first = trained.export("?format=onnx&version=1")
    assert first.status_code == 200, first.text
    assert first.headers["content-disposition"].endswith('-v1.onnx"')
    assert first.content != trained.export().content  # the default: active version 2
    path = tmp_path / "v1.onnx"
    path.write_bytes(first.content)
    model = onnx.load(str(path))
    assert model.model_version == 1
    assert {p.key: p.value for p in model.metadata_props}["version"] == "1"
    ran = run_snippet(path, PROBES, monkeypatch)
    labels, expected = server_probabilities(trained, "?version=1")
    ours = ran["probabilities"][:, [ran["labels"].index(label) for label in labels]]
    assert np.abs(ours - expected).max() <= TOLERANCE

    # A second download is the cached file, not a new build.
    monkeypatch.setattr(onnx_export, "build_model", _no_build)
    assert trained.export("?version=1").content == first.content

    runtime = trained.client.app.state.runtime  # type: ignore[attr-defined]
    folder = runtime.settings.models_dir / trained.model_id
    assert len(list(folder.glob("*.onnx"))) == 2
    deleted = trained.client.delete(f"/api/v1/models/{trained.model_id}/versions/1",
                                    headers=bearer())
    assert deleted.status_code == 204
    assert len(list(folder.glob("*.onnx"))) == 1  # version 2's
    gone = trained.export("?version=1")
    assert gone.status_code == 404 and gone.json()["error"]["code"] == "version_not_found"


def _no_build(**_kwargs: object) -> None:
    raise AssertionError("built again")


def test_errors_in_the_api_style(trained: Trained) -> None:
    unknown = trained.export("?format=tflite")
    assert unknown.status_code == 422
    assert unknown.json()["error"]["code"] == "invalid_request"
    missing = trained.export("?version=99")
    assert missing.status_code == 404 and missing.json()["error"]["code"] == "version_not_found"
    assert trained.export("?version=0").status_code == 422
    untrained = create_model(trained.client, name="untrained")
    response = trained.client.get(f"/api/v1/models/{untrained}/export", headers=bearer())
    assert response.status_code == 409
    assert response.json()["error"]["code"] == "model_not_trained"
    nowhere = trained.client.get("/api/v1/models/nope/export", headers=bearer())
    assert nowhere.status_code == 404 and nowhere.json()["error"]["code"] == "model_not_found"


def test_another_account_gets_404(trained: Trained) -> None:
    runtime = trained.client.app.state.runtime  # type: ignore[attr-defined]
    with runtime.session_factory() as session:
        create_account(session, name="other", key=OTHER_KEY)
    response = trained.export("?format=onnx", key=OTHER_KEY)
    assert response.status_code == 404
    assert response.json()["error"]["code"] == "model_not_found"
    assert response.headers["content-type"].startswith("application/json")


def test_readme_onnx_snippet_is_docs_onnx_snippet_py() -> None:
    """README's ONNX client snippet is the very file these tests run."""
    readme = (ROOT / "README.md").read_text()
    blocks = re.findall(r"```python\n(.*?)```", readme, flags=re.DOTALL)
    assert SNIPPET.read_text() in blocks, (
        "README.md must carry docs/onnx_snippet.py verbatim in a ```python block")

