from __future__ import annotations

from datetime import datetime

from pydantic import BaseModel, Field

from app.db.tables import Webhook, WebhookDelivery

MAX_PER_PAGE = 100
EVENTS_DESCRIPTION = ("any of training.succeeded, training.failed, version.activated, "
                      "batch_prediction.finished")


class WebhookCreate(BaseModel):
    url: str = Field(max_length=2000, examples=["https://example.com/hooks/nanonet"],
                     description="http or https, reaching a public address")
    events: list[str] = Field(examples=[["training.succeeded", "training.failed"]],
                              description=EVENTS_DESCRIPTION)
    model_id: str | None = Field(default=None,
                                 description="only this model's events; null: every model's")
    description: str = Field(default="", max_length=500)


class WebhookUpdate(BaseModel):
    url: str | None = Field(default=None, max_length=2000)
    events: list[str] | None = Field(default=None, description=EVENTS_DESCRIPTION)
    enabled: bool | None = None
    description: str | None = Field(default=None, max_length=500)


class WebhookOut(BaseModel):
    id: str
    url: str
    events: list[str]
    model_id: str | None
    enabled: bool
    description: str
    created_at: datetime
    updated_at: datetime

    @classmethod
    def build(cls, webhook: Webhook) -> WebhookOut:
        return cls(id=webhook.id, url=webhook.url, events=webhook.events,
                   model_id=webhook.model_id, enabled=webhook.enabled,
                   description=webhook.description, created_at=webhook.created_at,
                   updated_at=webhook.updated_at)


class WebhookCreated(WebhookOut):
    secret: str = Field(description="whsec_ + base64 key of the webhook-signature HMAC; shown "
                                    "only in this response")

    @classmethod
    def build_with_secret(cls, webhook: Webhook) -> WebhookCreated:
        return cls(**WebhookOut.build(webhook).model_dump(), secret=webhook.secret)


class WebhookPage(BaseModel):
    items: list[WebhookOut]
    total: int
    page: int
    per_page: int


class AttemptOut(BaseModel):
    at: datetime
    status_code: int | None = Field(description="null when no HTTP answer came")
    error: str | None = Field(description="null for a 2xx answer")
    seconds: float


class DeliveryOut(BaseModel):
    id: str = Field(description="the webhook-id header, the same on every attempt")
    event: str
    status: str = Field(description="pending | succeeded | failed")
    attempts: list[AttemptOut] = Field(description="oldest first")
    next_attempt_at: datetime | None
    created_at: datetime

    @classmethod
    def build(cls, delivery: WebhookDelivery) -> DeliveryOut:
        return cls(id=delivery.id, event=delivery.event, status=delivery.status,
                   attempts=[AttemptOut.model_validate(row) for row in delivery.attempts],
                   next_attempt_at=delivery.next_attempt_at, created_at=delivery.created_at)


class DeliveryPage(BaseModel):
    items: list[DeliveryOut]
    total: int
    page: int
    per_page: int


class DeliveryQueued(BaseModel):
    delivery_id: str
    job_id: str
