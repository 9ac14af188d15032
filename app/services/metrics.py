"""What a trained model can do, measured honestly: the active version's metrics."""

from __future__ import annotations

from sqlalchemy.orm import Session

from app.db.tables import Account, Model, ModelVersion
from app.errors import Conflict
from app.services.models import get_model


def version_metrics(session: Session, *, account: Account,
                    model_id: str) -> tuple[Model, ModelVersion]:
    """Return the model and its active version; raises NotFound or Conflict (not trained)."""
    model = get_model(session, account=account, model_id=model_id)
    if model.active_version is None:
        raise Conflict("This model has no trained version yet; train it first.",
                       code="model_not_trained")
    return model, model.active_version
