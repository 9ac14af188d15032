"""The web pages of webhooks: register an endpoint (its secret shown once), change it, send it a
test event, read its delivery log. The same services as /api/v1/webhooks."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Form, Request, Response
from fastapi.responses import RedirectResponse
from sqlalchemy.orm import Session

from app.api.deps import RuntimeDep, SessionDep
from app.db.tables import Account, DeliveryStatus
from app.errors import NanoNetError, NotFound
from app.schemas.webhooks import DeliveryOut, WebhookOut
from app.services import models as model_service
from app.services import webhooks as webhook_service
from app.web.deps import WebAccountDep, WebRoute
from app.web.templating import render

WEBHOOKS_PATH = "/web/webhooks"
DELIVERIES_SHOWN = 50
# While a delivery is pending, the page reloads itself this often (app.js; a link without JS).
RELOAD_MS = 2000

router = APIRouter(route_class=WebRoute, include_in_schema=False)

EventsForm = Annotated[list[str] | None, Form()]


def webhook_path(webhook_id: str) -> str:
    return f"{WEBHOOKS_PATH}/{webhook_id}"


def model_names(session: Session, account: Account) -> dict[str, str]:
    return {model.id: model.name for model in model_service.list_models(session, account=account)}


def list_page(request: Request, session: Session, *, account: Account, status: int = 200,
              **extra: Any) -> Response:
    rows, total = webhook_service.list_webhooks(session, account=account, page=1, per_page=100)
    return render(request, "webhooks.html", {
        "signed_in": True, "webhooks": [WebhookOut.build(row) for row in rows], "total": total,
        "events": webhook_service.EVENTS, "models": model_names(session, account), **extra,
    }, status=status)


def detail_page(request: Request, session: Session, *, account: Account, webhook_id: str,
                status: int = 200, **extra: Any) -> Response:
    webhook = webhook_service.get_webhook(session, account=account, webhook_id=webhook_id)
    rows, total = webhook_service.list_deliveries(session, account=account,
                                                  webhook_id=webhook_id, page=1,
                                                  per_page=DELIVERIES_SHOWN)
    deliveries = [DeliveryOut.build(row) for row in rows]
    pending = any(delivery.status == DeliveryStatus.PENDING for delivery in deliveries)
    return render(request, "webhook.html", {
        "signed_in": True, "webhook": WebhookOut.build(webhook), "deliveries": deliveries,
        "total_deliveries": total, "events": webhook_service.EVENTS,
        "models": model_names(session, account),
        "reload_ms": RELOAD_MS if pending else None, **extra,
    }, status=status)


def refused(request: Request, session: Session, exc: NanoNetError, *, account: Account,
            webhook_id: str) -> Response:
    """The webhook's page again with the service's refusal and its status; NotFound stays a
    404 page."""
    if isinstance(exc, NotFound):
        raise exc
    session.rollback()
    return detail_page(request, session, account=account, webhook_id=webhook_id,
                       status=exc.status, error=exc.message)


@router.get(WEBHOOKS_PATH)
def show_webhooks(request: Request, session: SessionDep, account: WebAccountDep) -> Response:
    return list_page(request, session, account=account)


@router.post(WEBHOOKS_PATH)
def create_webhook(request: Request, session: SessionDep, runtime: RuntimeDep,
                   account: WebAccountDep, url: Annotated[str, Form()] = "",
                   events: EventsForm = None, model_id: Annotated[str, Form()] = "",
                   description: Annotated[str, Form()] = "") -> Response:
    """Register; the answer is the new endpoint's page with its secret, this once (app.js puts
    the endpoint's own address in the address bar, so a reload shows the page without it)."""
    try:
        webhook = webhook_service.create_webhook(session, runtime, account=account, url=url,
                                                 events=events or [],
                                                 model_id=model_id or None,
                                                 description=description)
    except NanoNetError as exc:  # a NotFound here is the chosen model's: a form error too
        session.rollback()
        return list_page(request, session, account=account, status=exc.status,
                         error=exc.message, form={"url": url, "events": events or [],
                                                  "model_id": model_id,
                                                  "description": description})
    return detail_page(request, session, account=account, webhook_id=webhook.id, status=201,
                       secret=webhook.secret)


@router.get(WEBHOOKS_PATH + "/{webhook_id}")
def show_webhook(webhook_id: str, request: Request, session: SessionDep,
                 account: WebAccountDep, sent: str | None = None,
                 saved: bool = False) -> Response:
    return detail_page(request, session, account=account, webhook_id=webhook_id, sent=sent,
                       saved=saved)


@router.post(WEBHOOKS_PATH + "/{webhook_id}")
def update_webhook(webhook_id: str, request: Request, session: SessionDep, runtime: RuntimeDep,
                   account: WebAccountDep, url: Annotated[str, Form()] = "",
                   events: EventsForm = None, enabled: Annotated[str, Form()] = "",
                   description: Annotated[str, Form()] = "") -> Response:
    """The settings form: every field is sent, an unticked `enabled` means disabled."""
    try:
        webhook_service.update_webhook(session, runtime, account=account, webhook_id=webhook_id,
                                       url=url, events=events or [], enabled=bool(enabled),
                                       description=description)
    except NanoNetError as exc:
        return refused(request, session, exc, account=account, webhook_id=webhook_id)
    return RedirectResponse(webhook_path(webhook_id) + "?saved=1", status_code=303)


@router.post(WEBHOOKS_PATH + "/{webhook_id}/test")
def send_test(webhook_id: str, request: Request, session: SessionDep, runtime: RuntimeDep,
              account: WebAccountDep) -> Response:
    try:
        delivery, _job = webhook_service.send_test(session, runtime, account=account,
                                                   webhook_id=webhook_id)
    except NanoNetError as exc:
        return refused(request, session, exc, account=account, webhook_id=webhook_id)
    return RedirectResponse(f"{webhook_path(webhook_id)}?sent={delivery.id}#deliveries",
                            status_code=303)


@router.post(WEBHOOKS_PATH + "/{webhook_id}/delete")
def delete_webhook(webhook_id: str, session: SessionDep, account: WebAccountDep) -> Response:
    webhook_service.delete_webhook(session, account=account, webhook_id=webhook_id)
    return RedirectResponse(WEBHOOKS_PATH, status_code=303)
