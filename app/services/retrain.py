"""Retrain every model (or one account's): how a server takes up new backbones or settings.

`nanonet retrain --all` queues one training per model on the configured job backend, waits for
them and reports each model's cross-validated accuracy before and after, and whether the new
version went live.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

from sqlalchemy import select
from sqlalchemy.orm import Session

from app.db.tables import ACTIVE_JOB_STATUSES, Account, Job, Model, ModelVersion
from app.errors import NanoNetError, NotFound
from app.runtime import Runtime
from app.services.training import request_training


@dataclass
class Retraining:
    """One model's retraining: what served before, the job, and (once done) what came of it."""

    model_id: str
    model_name: str
    account_name: str
    before_version: int | None
    before_accuracy: float | None
    job_id: str | None = None
    skipped: str | None = None  # why no training was queued
    status: str = "queued"
    after_version: int | None = None
    after_accuracy: float | None = None
    activated: bool | None = None
    reason: str | None = None


def queue_retraining(session: Session, runtime: Runtime, *, account_name: str | None,
                     activate: str) -> list[Retraining]:
    """Queue a training of every model (of the accounts called `account_name`, if given), with
    the activation policy; a model that cannot train is listed as skipped, with the reason.
    Raises NotFound for an account name nobody has."""
    query = select(Model, Account).join(Account, Account.id == Model.account_id)
    if account_name is not None:
        if session.scalar(select(Account.id).where(Account.name == account_name)) is None:
            raise NotFound(f"No account is called {account_name!r}.", code="account_not_found")
        query = query.where(Account.name == account_name)
    rows = list(session.execute(query.order_by(Account.name, Model.created_at)))
    plan = []
    for model, account in rows:
        active = model.active_version
        item = Retraining(model_id=model.id, model_name=model.name, account_name=account.name,
                          before_version=active.number if active else None,
                          before_accuracy=(active.metrics or {}).get("accuracy")
                          if active else None)
        try:
            item.job_id = request_training(session, runtime, account=account,
                                           model_id=model.id, activate=activate).id
        except NanoNetError as exc:
            session.rollback()
            item.skipped, item.status = exc.message, "skipped"
        plan.append(item)
    return plan


def wait_for_retraining(runtime: Runtime, plan: list[Retraining], *, poll: float = 0.5,
                        on_done: Callable[[int], None] | None = None) -> None:
    """Wait until every queued training has finished, then fill in what came of each.
    `on_done(n)` is called with how many more finished since its last call."""
    waiting = {item.job_id: item for item in plan if item.job_id is not None}
    while waiting:
        with runtime.session_factory() as session:
            jobs = session.scalars(select(Job).where(Job.id.in_(list(waiting))))
            finished = [job for job in jobs if job.status not in ACTIVE_JOB_STATUSES]
            for job in finished:
                _record(session, waiting.pop(job.id), job)
        if finished and on_done is not None:
            on_done(len(finished))
        if waiting:
            time.sleep(poll)


def _record(session: Session, item: Retraining, job: Job) -> None:
    item.status = job.status
    version = session.scalar(select(ModelVersion).where(ModelVersion.job_id == job.id))
    if version is None:
        item.reason = job.error
        return
    item.after_version = version.number
    item.after_accuracy = (version.metrics or {}).get("accuracy")
    activation = version.activation or {}
    item.activated = activation.get("activated", False)
    item.reason = activation.get("reason") or version.error or job.error
