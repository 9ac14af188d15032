from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query, Response, status

from app.api.deps import AccountDep, RuntimeDep, SessionDep
from app.schemas.bounds import MAX_PAGE
from app.schemas.webhooks import (
    MAX_PER_PAGE,
    DeliveryOut,
    DeliveryPage,
    DeliveryQueued,
    WebhookCreate,
    WebhookCreated,
    WebhookOut,
    WebhookPage,
    WebhookUpdate,
)
from app.services import webhooks as webhook_service

router = APIRouter(prefix="/webhooks", tags=["webhooks"])

Page = Annotated[int, Query(ge=1, le=MAX_PAGE)]
PerPage = Annotated[int, Query(ge=1, le=MAX_PER_PAGE)]


@router.post("", status_code=status.HTTP_201_CREATED, response_model=WebhookCreated)
def create_webhook(body: WebhookCreate, session: SessionDep, runtime: RuntimeDep,
                   account: AccountDep) -> WebhookCreated:
    """Register an endpoint; the response carries its signing secret, shown only this once."""
    webhook = webhook_service.create_webhook(session, runtime, account=account, url=body.url,
                                             events=body.events, model_id=body.model_id,
                                             description=body.description)
    return WebhookCreated.build_with_secret(webhook)


@router.get("", response_model=WebhookPage)
def list_webhooks(session: SessionDep, account: AccountDep, page: Page = 1,
                  per_page: PerPage = 50) -> WebhookPage:
    rows, total = webhook_service.list_webhooks(session, account=account, page=page,
                                                per_page=per_page)
    return WebhookPage(items=[WebhookOut.build(row) for row in rows], total=total, page=page,
                       per_page=per_page)


@router.get("/{webhook_id}", response_model=WebhookOut)
def get_webhook(webhook_id: str, session: SessionDep, account: AccountDep) -> WebhookOut:
    return WebhookOut.build(webhook_service.get_webhook(session, account=account,
                                                        webhook_id=webhook_id))


@router.patch("/{webhook_id}", response_model=WebhookOut)
def update_webhook(webhook_id: str, body: WebhookUpdate, session: SessionDep,
                   runtime: RuntimeDep, account: AccountDep) -> WebhookOut:
    """Change the URL (checked again), the events, `enabled` or the description."""
    webhook = webhook_service.update_webhook(session, runtime, account=account,
                                             webhook_id=webhook_id, url=body.url,
                                             events=body.events, enabled=body.enabled,
                                             description=body.description)
    return WebhookOut.build(webhook)


@router.delete("/{webhook_id}", status_code=status.HTTP_204_NO_CONTENT)
def delete_webhook(webhook_id: str, session: SessionDep, account: AccountDep) -> Response:
    webhook_service.delete_webhook(session, account=account, webhook_id=webhook_id)
    return Response(status_code=status.HTTP_204_NO_CONTENT)


@router.post("/{webhook_id}/test", status_code=status.HTTP_202_ACCEPTED,
             response_model=DeliveryQueued)
def send_test(webhook_id: str, session: SessionDep, runtime: RuntimeDep,
              account: AccountDep) -> DeliveryQueued:
    """Queue a `webhook.test` event to this endpoint alone; follow it in its deliveries."""
    delivery, job = webhook_service.send_test(session, runtime, account=account,
                                              webhook_id=webhook_id)
    return DeliveryQueued(delivery_id=delivery.id, job_id=job.id)


@router.get("/{webhook_id}/deliveries", response_model=DeliveryPage)
def list_deliveries(webhook_id: str, session: SessionDep, account: AccountDep,
                    page: Page = 1, per_page: PerPage = 50) -> DeliveryPage:
    """The endpoint's deliveries, newest first, each with every attempt."""
    rows, total = webhook_service.list_deliveries(session, account=account,
                                                  webhook_id=webhook_id, page=page,
                                                  per_page=per_page)
    return DeliveryPage(items=[DeliveryOut.build(row) for row in rows], total=total, page=page,
                        per_page=per_page)
