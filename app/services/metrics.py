"""What a trained model can do, measured honestly: a version's metrics."""

from __future__ import annotations

from sqlalchemy.orm import Session

from app.db.tables import Account, Model, ModelVersion
from app.services.models import get_model
from app.services.versions import serving_version


def version_metrics(session: Session, *, account: Account, model_id: str,
                    number: int | None = None) -> tuple[Model, ModelVersion]:
    """Return the model and version `number` (default: the active one); raises NotFound or
    Conflict (not trained, or that version is not ready)."""
    model = get_model(session, account=account, model_id=model_id)
    return model, serving_version(session, model=model, number=number)
