"""What a trained NanoNet can do, measured honestly: the active version's metrics."""

from __future__ import annotations

from sqlalchemy.orm import Session

from app.db.tables import Account, ModelVersion, NanoNet
from app.errors import Conflict
from app.services.nanonets import get_nanonet


def version_metrics(session: Session, *, account: Account,
                    nanonet_id: str) -> tuple[NanoNet, ModelVersion]:
    """Return the NanoNet and its active version; raises NotFound or Conflict (not trained)."""
    nanonet = get_nanonet(session, account=account, nanonet_id=nanonet_id)
    if nanonet.active_version is None:
        raise Conflict("This NanoNet has no trained version yet; train it first.",
                       code="model_not_trained")
    return nanonet, nanonet.active_version
