"""Webhooks: endpoints an account registers, events, signed deliveries with retries.

SKELETON: being written by a helper; the interface below is fixed.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy.orm import Session

from app.runtime import Runtime

EVENTS = ("training.succeeded", "training.failed", "version.activated",
          "batch_prediction.finished")


def emit(session: Session, runtime: Runtime, *, account_id: str, model_id: str | None,
         event: str, data: dict[str, Any]) -> list[str]:
    """Queue one delivery of `event` per enabled endpoint of the account that wants it (and
    names this model or none); return the delivery ids. Call after the commit of what the
    event reports; commits its own rows, then dispatches. Never raises: a failure to queue is
    logged, and the caller's work stands."""
    return []


def run_delivery_job(runtime: Runtime, job_id: str) -> None:
    """Job handler of kind "webhook": one attempt of one delivery."""
    raise NotImplementedError
