"""Webhooks: endpoints an account registers, events, signed deliveries with retries.

Deliveries follow Standard Webhooks (standardwebhooks.com): `webhook-id` (the delivery id,
the same on every retry), `webhook-timestamp`, and `webhook-signature`: "v1," + base64 of
HMAC-SHA256 over "{id}.{timestamp}.{body}", keyed with the base64 after "whsec_" of the
endpoint's secret. Each delivery is one job on the "webhooks" lane; a retry puts the same job
back in the queue with a delay. A job ends as its delivery does: succeeded, or failed with the
last attempt's error.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import logging
import secrets
import time
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from app.db.base import new_id, utcnow
from app.db.tables import Account, DeliveryStatus, Job, JobStatus, Webhook, WebhookDelivery
from app.errors import Conflict, InvalidInput, NotFound
from app.runtime import Runtime
from app.services import jobs as job_service
from app.services import outbound
from app.services.models import get_model

log = logging.getLogger("nanonet.webhooks")

EVENTS = ("training.succeeded", "training.failed", "version.activated",
          "batch_prediction.finished")
TEST_EVENT = "webhook.test"
SECRET_PREFIX = "whsec_"
USER_AGENT = "NanoNet-Webhooks/1"
# A resumed job may be woken a little before its time by clocks and timers; that is no reason
# to go round the queue again.
EARLY_TOLERANCE_S = 0.05


def new_secret() -> str:
    """Return a signing secret: "whsec_" + base64 of 24 random bytes."""
    return SECRET_PREFIX + base64.b64encode(secrets.token_bytes(24)).decode("ascii")


def signature(secret: str, *, message_id: str, timestamp: int, body: str) -> str:
    """Return the `webhook-signature` header of one attempt: "v1," + base64 HMAC-SHA256."""
    key = base64.b64decode(secret.removeprefix(SECRET_PREFIX))
    digest = hmac.new(key, f"{message_id}.{timestamp}.{body}".encode(), hashlib.sha256).digest()
    return "v1," + base64.b64encode(digest).decode("ascii")


def create_webhook(session: Session, runtime: Runtime, *, account: Account, url: str,
                   events: list[str], model_id: str | None, description: str) -> Webhook:
    """Register an endpoint; return it (its secret is readable only now). Raises NotFound for
    a model that is not the account's, InvalidInput for unknown events or a refused URL."""
    if model_id is not None:
        get_model(session, account=account, model_id=model_id)
    webhook = Webhook(account_id=account.id, model_id=model_id, url=_checked_url(runtime, url),
                      events=_checked_events(events), secret=new_secret(), enabled=True,
                      description=description.strip())
    session.add(webhook)
    session.commit()
    log.info("webhooks.created id=%s account_id=%s events=%s", webhook.id, account.id,
             ",".join(webhook.events))
    return webhook


def get_webhook(session: Session, *, account: Account, webhook_id: str) -> Webhook:
    """Return the account's endpoint; raises NotFound for a missing or foreign one."""
    webhook = session.get(Webhook, webhook_id)
    if webhook is None or webhook.account_id != account.id:
        raise NotFound(f"No webhook with id {webhook_id!r}.", code="webhook_not_found")
    return webhook


def list_webhooks(session: Session, *, account: Account, page: int,
                  per_page: int) -> tuple[list[Webhook], int]:
    """Return one page of the account's endpoints, newest first, and how many there are."""
    where = Webhook.account_id == account.id
    total = session.scalar(select(func.count()).select_from(Webhook).where(where)) or 0
    rows = session.scalars(select(Webhook).where(where)
                           .order_by(Webhook.created_at.desc(), Webhook.id)
                           .offset((page - 1) * per_page).limit(per_page))
    return list(rows), total


def update_webhook(session: Session, runtime: Runtime, *, account: Account, webhook_id: str,
                   url: str | None = None, events: list[str] | None = None,
                   enabled: bool | None = None, description: str | None = None) -> Webhook:
    """Change what is given (None: unchanged); return the endpoint. A new URL is checked as at
    registration. Raises NotFound, InvalidInput."""
    webhook = get_webhook(session, account=account, webhook_id=webhook_id)
    if url is not None:
        webhook.url = _checked_url(runtime, url)
    if events is not None:
        webhook.events = _checked_events(events)
    if enabled is not None:
        webhook.enabled = enabled
    if description is not None:
        webhook.description = description.strip()
    session.commit()
    return webhook


def delete_webhook(session: Session, *, account: Account, webhook_id: str) -> None:
    """Delete the endpoint and its deliveries; one waiting for a retry is dropped when due.
    Raises NotFound."""
    webhook = get_webhook(session, account=account, webhook_id=webhook_id)
    session.delete(webhook)
    session.commit()
    log.info("webhooks.deleted id=%s", webhook_id)


def send_test(session: Session, runtime: Runtime, *, account: Account,
              webhook_id: str) -> tuple[WebhookDelivery, Job]:
    """Queue a `webhook.test` delivery to this endpoint alone; return it and its job. Raises
    NotFound, Conflict for a disabled endpoint, Unavailable when the queue is unreachable."""
    webhook = get_webhook(session, account=account, webhook_id=webhook_id)
    if not webhook.enabled:
        raise Conflict("This webhook is disabled; enable it to send it a test event.",
                       code="webhook_disabled")
    delivery, job = _new_delivery(session, webhook, event=TEST_EVENT, model_id=None,
                                  data={"webhook_id": webhook.id,
                                        "message": "A test event from NanoNet."})
    session.commit()
    _dispatch(session, runtime, delivery, job)
    return delivery, job


def list_deliveries(session: Session, *, account: Account, webhook_id: str, page: int,
                    per_page: int) -> tuple[list[WebhookDelivery], int]:
    """Return one page of the endpoint's deliveries, newest first, and how many there are.
    Raises NotFound."""
    webhook = get_webhook(session, account=account, webhook_id=webhook_id)
    where = WebhookDelivery.webhook_id == webhook.id
    total = session.scalar(select(func.count()).select_from(WebhookDelivery).where(where)) or 0
    rows = session.scalars(select(WebhookDelivery).where(where)
                           .order_by(WebhookDelivery.created_at.desc(),
                                     WebhookDelivery.id.desc())
                           .offset((page - 1) * per_page).limit(per_page))
    return list(rows), total


def emit(session: Session, runtime: Runtime, *, account_id: str, model_id: str | None,
         event: str, data: dict[str, Any]) -> list[str]:
    """Queue one delivery of `event` per enabled endpoint of the account that wants it (and
    names this model or none); return the delivery ids. Call after the commit of what the
    event reports; commits its own rows, then dispatches. Never raises: a failure to queue is
    logged, and the caller's work stands."""
    try:
        endpoints = [webhook for webhook in session.scalars(
            select(Webhook).where(Webhook.account_id == account_id, Webhook.enabled.is_(True))
            .order_by(Webhook.created_at))
            if event in webhook.events and webhook.model_id in (None, model_id)]
        pairs = [_new_delivery(session, webhook, event=event, model_id=model_id, data=data)
                 for webhook in endpoints]
        session.commit()
    except Exception:
        session.rollback()
        log.exception("webhooks.emit.failed event=%s account_id=%s model_id=%s", event,
                      account_id, model_id)
        return []
    queued = []
    for delivery, job in pairs:
        try:
            _dispatch(session, runtime, delivery, job)
        except Exception:
            log.exception("webhooks.emit.not_queued delivery_id=%s", delivery.id)
            continue
        queued.append(delivery.id)
    return queued


def run_delivery_job(runtime: Runtime, job_id: str) -> None:
    """Job handler of kind "webhook": one attempt of one delivery."""
    with runtime.session_factory() as session:
        job = session.get(Job, job_id)
        if job is None:
            return
        delivery_id = (job.params or {}).get("delivery_id")
        delivery = session.get(WebhookDelivery, delivery_id) if delivery_id else None
        if delivery is None:
            log.info("webhooks.delivery.dropped job_id=%s reason=deleted", job_id)
            job_service.succeed_job(session, job_id=job_id, result={
                "delivery_id": delivery_id, "status": "dropped",
                "reason": "the webhook was deleted"})
            return
        if delivery.status != DeliveryStatus.PENDING:
            _end_job(session, job_id=job_id, delivery=delivery)
            return
        if delivery.next_attempt_at is not None:
            wait = (delivery.next_attempt_at - utcnow()).total_seconds()
            if wait > EARLY_TOLERANCE_S:
                _requeue(session, runtime, job_id=job_id, delivery=delivery, delay=wait)
                return
        webhook = session.get(Webhook, delivery.webhook_id)
        if webhook is None or not webhook.enabled:
            attempt = _Attempt(at=utcnow(), status_code=None, seconds=0.0, final=True,
                               error="not sent: the webhook is disabled")
            _record(session, runtime, job_id=job_id, delivery=delivery, attempt=attempt)
            return
        url, secret, body, event = webhook.url, webhook.secret, delivery.body, delivery.event
        number = len(delivery.attempts) + 1
        session.commit()  # no transaction stays open while the receiver takes its time

    attempt = _attempt(runtime, url=url, secret=secret, message_id=delivery.id, body=body)
    log.info("webhooks.attempt delivery_id=%s webhook_id=%s event=%s attempt=%d status_code=%s "
             "seconds=%.3f error=%s", delivery.id, delivery.webhook_id, event, number,
             attempt.status_code, attempt.seconds, attempt.error)
    with runtime.session_factory() as session:
        current = session.get(WebhookDelivery, delivery.id)
        if current is None:
            job_service.succeed_job(session, job_id=job_id, result={
                "delivery_id": delivery.id, "status": "dropped",
                "reason": "the webhook was deleted"})
            return
        _record(session, runtime, job_id=job_id, delivery=current, attempt=attempt)


@dataclass(frozen=True)
class _Attempt:
    at: datetime
    status_code: int | None
    error: str | None
    seconds: float
    final: bool = False  # no retry, whatever attempts are left (a refused address)

    def as_row(self) -> dict[str, Any]:
        return {"at": self.at.isoformat(), "status_code": self.status_code,
                "error": self.error, "seconds": round(self.seconds, 3)}


def _attempt(runtime: Runtime, *, url: str, secret: str, message_id: str,
             body: str) -> _Attempt:
    settings = runtime.settings
    at, started = utcnow(), time.monotonic()

    def done(status_code: int | None, error: str | None, *, final: bool = False) -> _Attempt:
        return _Attempt(at=at, status_code=status_code, error=error, final=final,
                        seconds=time.monotonic() - started)

    try:
        # Again at every attempt, after resolving: the name may point elsewhere by now.
        target = outbound.check_url(url, allow_private=settings.url_allow_private)
    except outbound.UrlNotAllowed as exc:
        return done(None, f"not sent: {exc.message}", final=True)
    except outbound.UrlUnresolvable as exc:
        return done(None, exc.message)
    timestamp = int(time.time())
    headers = {"content-type": "application/json", "user-agent": USER_AGENT,
               "webhook-id": message_id, "webhook-timestamp": str(timestamp),
               "webhook-signature": signature(secret, message_id=message_id,
                                              timestamp=timestamp, body=body)}
    try:
        answer = outbound.post(target, body=body.encode(), headers=headers,
                               timeout=settings.webhook_timeout)
    except outbound.OutboundError as exc:
        return done(None, str(exc))
    if 200 <= answer.status < 300:
        return done(answer.status, None)
    excerpt = " ".join(answer.excerpt.split())[:300]
    if 300 <= answer.status < 400:
        error = (f"HTTP {answer.status}: redirects are not followed "
                 f"(to {answer.location or 'nowhere'}); register the final URL")
    else:
        error = f"HTTP {answer.status}" + (f": {excerpt}" if excerpt else "")
    return done(answer.status, error)


def _record(session: Session, runtime: Runtime, *, job_id: str, delivery: WebhookDelivery,
            attempt: _Attempt) -> None:
    """Add the attempt to the delivery, then end it (and its job) or schedule the next one."""
    delivery.attempts = [*delivery.attempts, attempt.as_row()]
    made = len(delivery.attempts)
    delays = runtime.settings.webhook_retry_delays
    if attempt.error is None:
        delivery.status, delivery.next_attempt_at = DeliveryStatus.SUCCEEDED, None
    elif attempt.final or made >= 1 + len(delays):
        delivery.status, delivery.next_attempt_at = DeliveryStatus.FAILED, None
    else:
        delay = delays[made - 1]
        delivery.next_attempt_at = utcnow() + timedelta(seconds=delay)
        session.commit()
        _requeue(session, runtime, job_id=job_id, delivery=delivery, delay=delay)
        return
    session.commit()
    log.info("webhooks.delivery.%s delivery_id=%s attempts=%d", delivery.status, delivery.id,
             made)
    _end_job(session, job_id=job_id, delivery=delivery)


def _end_job(session: Session, *, job_id: str, delivery: WebhookDelivery) -> None:
    attempts = delivery.attempts
    if delivery.status == DeliveryStatus.SUCCEEDED:
        job_service.succeed_job(session, job_id=job_id, result={
            "delivery_id": delivery.id, "status": delivery.status, "attempts": len(attempts),
            "status_code": attempts[-1]["status_code"] if attempts else None})
        return
    last = attempts[-1]["error"] if attempts else None
    job_service.fail_job(session, job_id=job_id,
                         error=f"Delivery {delivery.id} failed after {len(attempts)} "
                               f"attempt(s): {last or 'no reason recorded'}")


def _requeue(session: Session, runtime: Runtime, *, job_id: str, delivery: WebhookDelivery,
             delay: float) -> None:
    """Put the running job back to `queued` and hand it to the queue to run in `delay` s."""
    job = session.get(Job, job_id)
    if job is None or job.status != JobStatus.RUNNING:
        return
    # attempts counts claims, which restart recovery weighs against job_max_attempts: each
    # delivery attempt gets that many, whatever attempt of the delivery it is.
    job.status, job.stage, job.attempts = JobStatus.QUEUED, "waiting_retry", 0
    job.progress = len(delivery.attempts) / (1 + len(runtime.settings.webhook_retry_delays))
    session.commit()
    try:
        job_service.dispatch(session, runtime.queue, job, delay=delay)
    except Exception:
        log.exception("webhooks.retry.not_queued delivery_id=%s", delivery.id)
        _give_up(session, delivery=delivery, job_id=job_id,
                 error="not retried: the job queue could not be reached")


def _new_delivery(session: Session, webhook: Webhook, *, event: str, model_id: str | None,
                  data: dict[str, Any]) -> tuple[WebhookDelivery, Job]:
    now = utcnow()
    body = json.dumps({"type": event, "timestamp": now.isoformat().replace("+00:00", "Z"),
                       "data": data}, separators=(",", ":"), ensure_ascii=False, default=str)
    delivery = WebhookDelivery(id=f"msg_{new_id()}", webhook_id=webhook.id, event=event,
                               body=body, status=DeliveryStatus.PENDING, attempts=[],
                               created_at=now)
    # No model_id on the job itself: a queued delivery would count as the model's active job
    # (jobs._other_active_job) and die with the model; the model is in params.
    job = Job(id=new_id(), account_id=webhook.account_id, model_id=None,
              kind=job_service.WEBHOOK_JOB,
              params={"delivery_id": delivery.id, "webhook_id": webhook.id, "event": event,
                      "model_id": model_id})
    session.add_all([delivery, job])
    return delivery, job


def _dispatch(session: Session, runtime: Runtime, delivery: WebhookDelivery, job: Job) -> None:
    """Hand a committed delivery's job to the queue; if that fails, fail the delivery too and
    raise (Unavailable from jobs.dispatch)."""
    try:
        job_service.dispatch(session, runtime.queue, job)
    except Exception:
        _give_up(session, delivery=delivery, job_id=job.id,
                 error="not sent: the job queue could not be reached")
        raise


def _give_up(session: Session, *, delivery: WebhookDelivery, job_id: str, error: str) -> None:
    session.rollback()
    current = session.get(WebhookDelivery, delivery.id)
    if current is not None and current.status == DeliveryStatus.PENDING:
        current.attempts = [*current.attempts, _Attempt(at=utcnow(), status_code=None,
                                                        error=error, seconds=0.0).as_row()]
        current.status, current.next_attempt_at = DeliveryStatus.FAILED, None
        session.commit()
    job_service.fail_job(session, job_id=job_id, error=error)


def _checked_url(runtime: Runtime, url: str) -> str:
    url = url.strip()
    outbound.check_url(url, allow_private=runtime.settings.url_allow_private)
    return url


def _checked_events(events: list[str]) -> list[str]:
    wanted = list(dict.fromkeys(event.strip() for event in events))
    valid = ", ".join(EVENTS)
    if not wanted:
        raise InvalidInput(f"Subscribe to at least one event: {valid}.", code="no_events",
                           details={"valid_events": list(EVENTS)})
    unknown = [event for event in wanted if event not in EVENTS]
    if unknown:
        raise InvalidInput(f"Unknown event(s): {', '.join(unknown)}. Valid events: {valid}.",
                           code="unknown_event", details={"valid_events": list(EVENTS)})
    return wanted
