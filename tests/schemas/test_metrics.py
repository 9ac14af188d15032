"""A version's stored metrics and params: what training records validates and dumps unchanged,
anything else is refused, and the API answers with the JSON it gave before they were typed."""

from __future__ import annotations

import copy
import json
from collections.abc import Callable
from typing import Any

import numpy as np
import pytest
from fastapi.testclient import TestClient
from pydantic import ValidationError

from app.db.tables import Model, ModelVersion
from app.ml import select
from app.ml.curve import summarize
from app.schemas.metrics import VersionMetrics, VersionParams
from tests.conftest import bearer, create_model, tree_photos, upload, wait_for_job

LABELS = ["hemlock", "japanese_cherry"]
Stored = dict[str, Any]


@pytest.fixture(scope="module")
def recorded() -> tuple[Stored, Stored]:
    """Metrics and params as training records them: the real selection, on synthetic features."""
    rng = np.random.default_rng(0)
    targets = np.repeat([0, 1], 6)
    features = {"mobilenet_v2": rng.normal(size=(12, 2, 16)) + targets[:, None, None]}
    result = select.fit_model(features, targets, LABELS, seed=0)
    assert result.metrics is not None
    chosen = features[result.candidate.backbone]

    def fit_predict(train: np.ndarray, val: np.ndarray) -> np.ndarray:
        head = select.fit_candidate(result.candidate, chosen[train], targets[train], n_classes=2)
        return head.predict_proba(chosen[val, 0])

    curve = summarize(targets, fit_predict, accuracy=result.metrics["accuracy"])
    metrics = {**result.metrics, "learning_curve": curve}
    params = {"l2": result.candidate.l2, "views": 2, "metrics_note": result.metrics_note,
              "candidates": result.scores,
              "unknown_threshold": (result.unknown or {}).get("threshold"),
              "settings": {"backbones": ["mobilenet_v2"], "views": 2, "seed": 0,
                           "activate": "always"}}
    return json.loads(json.dumps(metrics)), json.loads(json.dumps(params))


def test_what_training_records_dumps_unchanged(recorded: tuple[Stored, Stored]) -> None:
    metrics, params = recorded
    assert metrics["learning_curve"]["points"] and metrics["learning_curve"]["curve"]
    # Same keys, values, nesting and order: the JSON column and GET /models/{id} stay as they were.
    dumped = VersionMetrics.model_validate(metrics).model_dump(mode="json")
    assert json.dumps(dumped) == json.dumps(metrics)
    assert json.dumps(VersionParams.model_validate(params).model_dump(mode="json")) == \
        json.dumps(params)


def _set(path: str, value: Any) -> Callable[[Stored], None]:
    *parents, key = path.split(".")

    def change(stored: Stored) -> None:
        for part in parents:
            stored = stored[int(part)] if part.isdigit() else stored[part]  # type: ignore[index]
        stored[int(key) if key.isdigit() else key] = value  # type: ignore[index]

    return change


@pytest.mark.parametrize("change", [
    _set("accuracy", "0.9"),
    _set("log_loss", float("inf")),
    _set("learning_curve.curve.a", float("nan")),
    _set("accuracy", 1.3),
    _set("note", "a key training never writes"),
    lambda m: m.pop("confusion_matrix"),
    _set("per_class.0.support", 2.0),
    lambda m: m["confusion_matrix"]["matrix"][0].pop(),
    _set("confusion_matrix.matrix.0.0", -1),
    _set("learning_curve.points.0.images_per_class", 0),
    _set("learning_curve.advice", 7),
    _set("learning_curve.projection", None),
], ids=["text", "infinite", "nan", "above-1", "extra-key", "missing-key", "float-count", "ragged",
        "negative-count", "zero-images", "advice-not-text", "projection-not-a-list"])
def test_malformed_metrics_are_refused(recorded: tuple[Stored, Stored],
                                       change: Callable[[Stored], None]) -> None:
    metrics = copy.deepcopy(recorded[0])
    change(metrics)
    with pytest.raises(ValidationError):
        VersionMetrics.model_validate(metrics)


@pytest.mark.parametrize("change", [
    _set("candidates", "not a list"),
    _set("candidates.0.cv_accuracy", None),
    _set("views", 0),
    lambda p: p.pop("unknown_threshold"),
], ids=["candidates-not-a-list", "missing-score", "no-views", "missing-key"])
def test_malformed_params_are_refused(recorded: tuple[Stored, Stored],
                                      change: Callable[[Stored], None]) -> None:
    params = copy.deepcopy(recorded[1])
    change(params)
    with pytest.raises(ValidationError):
        VersionParams.model_validate(params)


def test_the_api_answers_a_stored_version_as_before(client: TestClient,
                                                    recorded: tuple[Stored, Stored]) -> None:
    metrics, params = recorded
    model_id = create_model(client, categories=tuple(LABELS))
    with client.app.state.runtime.session_factory() as session:  # type: ignore[attr-defined]
        model = session.get(Model, model_id)
        assert model is not None
        version = ModelVersion(model_id=model_id, number=1, backbone="mobilenet_v2",
                               head=metrics["head"], labels=LABELS, metrics=metrics,
                               params=params, image_ids=list(range(12)), artifact_path="x.pt",
                               train_seconds=1.5)
        session.add(version)
        session.flush()
        model.active_version_id = version.id
        model.state = "ready"
        session.commit()

    shown = client.get(f"/api/v1/models/{model_id}", headers=bearer())
    assert shown.status_code == 200, shown.text
    assert json.dumps(shown.json()["metrics"]) == json.dumps(metrics)
    assert shown.json()["metrics_note"] is None

    answer = client.get(f"/api/v1/models/{model_id}/metrics", headers=bearer())
    assert answer.status_code == 200, answer.text
    curve = metrics["learning_curve"]
    expected = {
        "model_id": model_id, "version": 1, "backbone": "mobilenet_v2", "head": metrics["head"],
        "views": 2, "method": metrics["method"], "n_images": 12,
        **{key: metrics[key] for key in ("accuracy", "balanced_accuracy", "log_loss",
                                         "calibration_error", "per_class", "confusion_matrix")},
        "learning_curve": {
            "points": [{key: p[key] for key in ("images_per_class", "accuracy", "std")}
                       for p in curve["points"]],
            "projection": [{**p, "std": None} for p in curve["projection"]],
            "advice": curve["advice"],
        },
        "unknown_threshold": params["unknown_threshold"], "candidates": params["candidates"],
        "note": None,
    }
    assert json.dumps(answer.json()) == json.dumps(expected)


@pytest.mark.slow
def test_training_refuses_to_store_malformed_metrics(
        client: TestClient, monkeypatch: pytest.MonkeyPatch) -> None:
    fit_model = select.fit_model

    def fit_with_a_ragged_matrix(*args: Any, **kwargs: Any) -> select.FitResult:
        result = fit_model(*args, **kwargs)
        assert result.metrics is not None
        result.metrics["confusion_matrix"]["matrix"][0].pop()
        return result

    monkeypatch.setattr(select, "fit_model", fit_with_a_ragged_matrix)
    model_id = create_model(client, categories=tuple(LABELS))
    for label in LABELS:
        upload(client, model_id, label, tree_photos(label)[:2])
    job_id = client.post(f"/api/v1/models/{model_id}/train", headers=bearer()).json()["job_id"]
    job = wait_for_job(client, job_id)
    assert job["status"] == "failed" and "unexpected error" in job["error"], job
    assert "ValidationError" not in job["error"]  # the exception goes to the log, not to users
    model = client.get(f"/api/v1/models/{model_id}", headers=bearer()).json()
    assert model["state"] == "failed" and model["version"] is None and model["metrics"] is None
