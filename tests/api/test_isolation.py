from __future__ import annotations

from fastapi.testclient import TestClient
from sqlalchemy import select

from app.db.tables import Job
from app.services.accounts import create_account
from tests.conftest import OTHER_KEY, bearer, create_model, files_of, tree_photos


def test_another_account_sees_404_never_the_data(client: TestClient, trained_trees: str) -> None:
    runtime = client.app.state.runtime  # type: ignore[attr-defined]
    with runtime.session_factory() as session:
        create_account(session, name="other", key=OTHER_KEY)
    with runtime.session_factory() as session:
        job_id = session.scalars(select(Job.id).where(Job.model_id == trained_trees)).first()
    other = bearer(OTHER_KEY)
    model_id = trained_trees
    photo = tree_photos("hemlock")[:1]
    assert client.get(f"/api/v1/jobs/{job_id}", headers=bearer()).status_code == 200
    assert client.get(f"/api/v1/models/{model_id}/metrics", headers=bearer()).status_code == 200

    assert client.get("/api/v1/models", headers=other).json()["models"] == []
    requests = [
        client.get(f"/api/v1/models/{model_id}", headers=other),
        client.post(f"/api/v1/models/{model_id}/images", data={"category": "hemlock"},
                    files=files_of(*photo), headers=other),
        client.post(f"/api/v1/models/{model_id}/train", headers=other),
        client.post(f"/api/v1/models/{model_id}/predict", files=files_of(*photo), headers=other),
        client.get(f"/api/v1/models/{model_id}/metrics", headers=other),
        client.get(f"/api/v1/jobs/{job_id}", headers=other),
        client.delete(f"/api/v1/models/{model_id}", headers=other),
    ]
    for response in requests:
        assert response.status_code == 404, response.text
        assert "hemlock" not in response.text and "trees" not in response.text

    own_jobs = client.get(f"/api/v1/models/{model_id}", headers=bearer()).json()
    assert own_jobs["state"] == "ready"
    other_model = create_model(client, name="theirs", key=OTHER_KEY)
    assert client.get(f"/api/v1/models/{other_model}", headers=bearer()).status_code == 404
