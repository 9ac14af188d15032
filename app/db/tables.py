"""Tables. Every row belongs, directly or through its model, to one account."""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum
from typing import Any

from sqlalchemy import (
    JSON,
    Boolean,
    Float,
    ForeignKey,
    Index,
    Integer,
    String,
    Text,
    UniqueConstraint,
    false,
)
from sqlalchemy.orm import Mapped, mapped_column, relationship

from app.db.base import Base, UTCDateTime, new_id, utcnow


class ModelState(StrEnum):
    """`ready` whenever a version is active: a failed retraining leaves the model serving."""

    CREATED = "created"
    TRAINING = "training"
    READY = "ready"
    FAILED = "failed"


class JobStatus(StrEnum):
    """Only `queued` jobs are claimed and only `running` ones report progress. A cancelled or
    timed-out job is `failed`, its stage saying which (`cancelled`, `timed_out`)."""

    QUEUED = "queued"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"


ACTIVE_JOB_STATUSES = (JobStatus.QUEUED, JobStatus.RUNNING)


class VersionStatus(StrEnum):
    """A version is made when its training starts and never changes once ready or failed, but
    for its learning curve, which the job adds to its metrics after it is ready."""

    TRAINING = "training"
    READY = "ready"
    FAILED = "failed"


class DeliveryStatus(StrEnum):
    PENDING = "pending"  # waiting for its next attempt
    SUCCEEDED = "succeeded"
    FAILED = "failed"  # out of attempts, or refused before sending (the URL's address)


class Account(Base):
    __tablename__ = "account"

    id: Mapped[str] = mapped_column(String(32), primary_key=True, default=new_id)
    name: Mapped[str] = mapped_column(String(200))
    # The one account NANONET_BOOTSTRAP_API_KEY keeps: a new value there rotates its key.
    is_bootstrap: Mapped[bool] = mapped_column(Boolean, default=False, server_default=false())
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)


class KeyHash(StrEnum):
    HMAC_SHA256 = "hmac-sha256"  # keyed with the server secret
    SHA256 = "sha256"  # before migration 0008; rehashed when the key is next used


class ApiKey(Base):
    __tablename__ = "api_key"

    id: Mapped[str] = mapped_column(String(32), primary_key=True, default=new_id)
    account_id: Mapped[str] = mapped_column(
        ForeignKey("account.id", ondelete="CASCADE"), index=True
    )
    key_hash: Mapped[str] = mapped_column(String(64), unique=True)
    hash_scheme: Mapped[str] = mapped_column(String(20), default=KeyHash.HMAC_SHA256)
    prefix: Mapped[str] = mapped_column(String(16))
    name: Mapped[str] = mapped_column(String(200))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    revoked_at: Mapped[datetime | None] = mapped_column(UTCDateTime, default=None)


class WebSession(Base):
    """A sign-in to the web form. The cookie carries only the signed token; the row is keyed by
    the token's digest, so the table alone opens no session."""

    __tablename__ = "web_session"

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    account_id: Mapped[str] = mapped_column(
        ForeignKey("account.id", ondelete="CASCADE"), index=True)
    api_key_id: Mapped[str] = mapped_column(
        ForeignKey("api_key.id", ondelete="CASCADE"), index=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    expires_at: Mapped[datetime] = mapped_column(UTCDateTime, index=True)
    revoked_at: Mapped[datetime | None] = mapped_column(UTCDateTime, default=None)


class Model(Base):
    __tablename__ = "model"
    # The account's models newest first, a page at once (GET /models): no sort of them all.
    __table_args__ = (Index("ix_model_account_created", "account_id", "created_at"),)

    id: Mapped[str] = mapped_column(String(32), primary_key=True, default=new_id)
    account_id: Mapped[str] = mapped_column(
        ForeignKey("account.id", ondelete="CASCADE"), index=True
    )
    name: Mapped[str] = mapped_column(String(200))
    kind: Mapped[str] = mapped_column(String(20), default="single_label")
    state: Mapped[str] = mapped_column(String(20), default=ModelState.CREATED)
    active_version_id: Mapped[str | None] = mapped_column(
        ForeignKey("model_version.id", use_alter=True, ondelete="SET NULL"), nullable=True
    )
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow, onupdate=utcnow)

    categories: Mapped[list[Category]] = relationship(
        back_populates="model", order_by="Category.position", cascade="all, delete-orphan"
    )
    active_version: Mapped[ModelVersion | None] = relationship(
        foreign_keys=[active_version_id], post_update=True
    )


class Category(Base):
    __tablename__ = "category"
    __table_args__ = (UniqueConstraint("model_id", "name"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    model_id: Mapped[str] = mapped_column(ForeignKey("model.id", ondelete="CASCADE"), index=True)
    name: Mapped[str] = mapped_column(String(200))
    position: Mapped[int] = mapped_column(Integer)

    model: Mapped[Model] = relationship(back_populates="categories")


class Image(Base):
    """One training image of one NanoNet; its bytes live in the content-addressed store."""

    __tablename__ = "image"
    # AUTOINCREMENT: SQLite would otherwise hand a deleted image's id to the next upload, and
    # versions (their image_ids, their review) would then name the wrong image.
    __table_args__ = (UniqueConstraint("model_id", "sha256", "copy"),
                      {"sqlite_autoincrement": True})

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    model_id: Mapped[str] = mapped_column(ForeignKey("model.id", ondelete="CASCADE"), index=True)
    sha256: Mapped[str] = mapped_column(String(64), index=True)
    # 0 for the first row of these bytes in the model; 1, 2... for the same bytes uploaded to
    # other categories (kept, so the review can list the conflict). The unique key over it
    # makes two requests adding the same bytes at once collide, as before there were copies.
    copy: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    filename: Mapped[str] = mapped_column(String(500))
    source: Mapped[str] = mapped_column(String(20), default="upload")
    format: Mapped[str] = mapped_column(String(10))
    width: Mapped[int] = mapped_column(Integer)
    height: Mapped[int] = mapped_column(Integer)
    size_bytes: Mapped[int] = mapped_column(Integer)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    # The category the image had when a person kept it in the review: while it still has that
    # label it is not flagged as a suspected mislabel again.
    kept_category_id: Mapped[int | None] = mapped_column(
        ForeignKey("category.id", ondelete="SET NULL"), default=None)


class ImageLabel(Base):
    __tablename__ = "image_label"

    image_id: Mapped[int] = mapped_column(
        ForeignKey("image.id", ondelete="CASCADE"), primary_key=True
    )
    category_id: Mapped[int] = mapped_column(
        ForeignKey("category.id", ondelete="CASCADE"), primary_key=True, index=True
    )


class Job(Base):
    __tablename__ = "job"
    __table_args__ = (Index("ix_job_status_created_at", "status", "created_at"),)

    id: Mapped[str] = mapped_column(String(32), primary_key=True, default=new_id)
    account_id: Mapped[str] = mapped_column(
        ForeignKey("account.id", ondelete="CASCADE"), index=True
    )
    model_id: Mapped[str | None] = mapped_column(
        ForeignKey("model.id", ondelete="CASCADE"), index=True, nullable=True
    )
    kind: Mapped[str] = mapped_column(String(30))
    # What the job was asked to do (training's activation policy, a batch's inputs...).
    params: Mapped[dict[str, Any] | None] = mapped_column(JSON, nullable=True)
    status: Mapped[str] = mapped_column(String(20), default=JobStatus.QUEUED)
    stage: Mapped[str] = mapped_column(String(40), default="queued")
    progress: Mapped[float] = mapped_column(Float, default=0.0)
    error: Mapped[str | None] = mapped_column(Text, nullable=True)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    result: Mapped[dict[str, Any] | None] = mapped_column(JSON, nullable=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    started_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    finished_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow, onupdate=utcnow)
    # When a worker could first take the job (sent, or sent with a delay): a `queued` job
    # still unclaimed long after it is sent again (the message may never have left).
    due_at: Mapped[datetime | None] = mapped_column(UTCDateTime, default=utcnow, nullable=True)
    # Renewed by the running worker's heartbeat; a `running` job past it has lost its worker.
    lease_until: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    # Set at claim for kinds with a time limit (training): past it the run is stopped.
    deadline_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    # Asked to stop: the handler does so at its next progress report.
    cancel_requested_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)


class ModelVersion(Base):
    """One training run of a model: made when the run starts, immutable once ready or failed.

    `image_ids`, `image_hashes` and `image_labels` (indices into `labels`) are parallel lists:
    what the version was trained on, as it was then, whatever happens to the images later.
    """

    __tablename__ = "model_version"
    __table_args__ = (UniqueConstraint("model_id", "number"),)

    id: Mapped[str] = mapped_column(String(32), primary_key=True, default=new_id)
    model_id: Mapped[str] = mapped_column(ForeignKey("model.id", ondelete="CASCADE"), index=True)
    number: Mapped[int] = mapped_column(Integer)
    status: Mapped[str] = mapped_column(String(20), default=VersionStatus.READY,
                                        server_default=VersionStatus.READY)
    error: Mapped[str | None] = mapped_column(Text, nullable=True)
    job_id: Mapped[str | None] = mapped_column(String(32), nullable=True, index=True)
    backbone: Mapped[str | None] = mapped_column(String(60), nullable=True)
    head: Mapped[str | None] = mapped_column(String(30), nullable=True)
    labels: Mapped[list[str]] = mapped_column(JSON)
    metrics: Mapped[dict[str, Any] | None] = mapped_column(JSON, nullable=True)
    params: Mapped[dict[str, Any]] = mapped_column(JSON)
    image_ids: Mapped[list[int]] = mapped_column(JSON)
    image_hashes: Mapped[list[str] | None] = mapped_column(JSON, nullable=True)
    image_labels: Mapped[list[int] | None] = mapped_column(JSON, nullable=True)
    # What changed since the version before: images added/removed per category, categories.
    changes: Mapped[dict[str, Any] | None] = mapped_column(JSON, nullable=True)
    # How activation went: {"policy", "activated", "reason"}.
    activation: Mapped[dict[str, Any] | None] = mapped_column(JSON, nullable=True)
    artifact_path: Mapped[str] = mapped_column(String(500))
    train_seconds: Mapped[float] = mapped_column(Float)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    finished_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)

    @property
    def chosen(self) -> tuple[str, str]:
        """(backbone, head) of a ready version; raises ValueError for one still training."""
        if self.backbone is None or self.head is None:
            raise ValueError(f"version {self.number} is {self.status}: it has no model yet")
        return self.backbone, self.head


class Webhook(Base):
    """An endpoint an account registered to hear about events, of one model or all of its own."""

    __tablename__ = "webhook"

    id: Mapped[str] = mapped_column(String(32), primary_key=True, default=new_id)
    account_id: Mapped[str] = mapped_column(
        ForeignKey("account.id", ondelete="CASCADE"), index=True)
    model_id: Mapped[str | None] = mapped_column(
        ForeignKey("model.id", ondelete="CASCADE"), index=True, nullable=True)
    url: Mapped[str] = mapped_column(String(2000))
    events: Mapped[list[str]] = mapped_column(JSON)
    secret: Mapped[str] = mapped_column(String(100))  # "whsec_" + base64, as Standard Webhooks
    enabled: Mapped[bool] = mapped_column(default=True)
    description: Mapped[str] = mapped_column(String(500), default="")
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow, onupdate=utcnow)


class WebhookDelivery(Base):
    """One event for one endpoint: the exact body sent, and every attempt to send it."""

    __tablename__ = "webhook_delivery"
    __table_args__ = (Index("ix_webhook_delivery_webhook_created", "webhook_id", "created_at"),)

    id: Mapped[str] = mapped_column(String(40), primary_key=True)  # "msg_" + id: webhook-id
    webhook_id: Mapped[str] = mapped_column(ForeignKey("webhook.id", ondelete="CASCADE"))
    event: Mapped[str] = mapped_column(String(60))
    body: Mapped[str] = mapped_column(Text)  # the JSON as signed and sent, byte for byte
    status: Mapped[str] = mapped_column(String(20), default=DeliveryStatus.PENDING)
    # [{"at", "status_code" | None, "error" | None, "seconds"}], oldest first.
    attempts: Mapped[list[dict[str, Any]]] = mapped_column(JSON, default=list)
    next_attempt_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
