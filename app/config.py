"""One Settings object: every knob of the service, read from NANONET_* environment variables."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from app.ml.registry import parse_backbones

MiB = 1024 * 1024


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="NANONET_", env_file=".env", extra="ignore")

    environment: Literal["development", "production"] = "development"
    data_dir: Path = Path("data")
    database_url: str | None = Field(
        default=None, description="SQLAlchemy URL; default: SQLite file in data_dir"
    )
    job_backend: Literal["inprocess", "celery"] = "inprocess"
    job_workers: int = Field(default=1, ge=1, le=16)
    job_max_attempts: int = Field(default=2, ge=1, le=10)
    redis_url: str = "redis://localhost:6379/0"
    job_queue: str = Field(default="cpu", description="Celery queue the API sends jobs to")
    job_visibility_timeout: int = Field(
        default=6 * 3600, ge=60,
        description="Seconds a Celery job may stay unacknowledged before Redis hands it to "
        "another worker as lost; keep it above the longest training",
    )
    device: Literal["cpu", "cuda", "auto"] = "cpu"
    torch_threads: int | None = Field(default=None, ge=1)

    backbones: str = Field(
        default="auto",
        description="comma-separated candidate backbones for model selection, `auto` for the "
                    "default set, `all` for every registered one (whose weights are installed)",
    )
    augment_views: int | None = Field(
        default=None, ge=0, le=16,
        description="augmented views per training image; unset: the benchmarked default",
    )
    extract_on_upload: bool = Field(
        default=True, description="extract features in the background as soon as images arrive"
    )
    feature_batch_size: int = Field(default=16, ge=1, le=256)

    max_file_bytes: int = Field(default=20 * MiB, ge=1)
    max_image_pixels: int = Field(default=40_000_000, ge=1)
    max_files_per_request: int = Field(default=500, ge=1)
    max_request_bytes: int = Field(default=1024 * MiB, ge=1)

    bootstrap_api_key: SecretStr | None = None
    create_first_account: bool = Field(
        default=True, description="on a first start with no account, create one and print its key"
    )
    head_cache_size: int = Field(default=256, ge=1)
    keep_versions: int = Field(
        default=10, ge=1,
        description="versions kept per model; the oldest inactive ones and their files go first")

    url_allow_private: bool = Field(
        default=False,
        description="let webhooks (and URL uploads) reach loopback, private, link-local and "
                    "cloud-metadata addresses; for tests and closed networks only")
    webhook_workers: int = Field(
        default=8, ge=1, le=64,
        description="deliveries in flight at once in the embedded runner: each waits on a "
                    "receiver (up to the timeout), so a few that hang must not hold up the rest")
    webhook_timeout: float = Field(default=10.0, gt=0, le=60,
                                   description="seconds one delivery attempt may take in all")
    webhook_retry_delays: list[float] = Field(
        default=[30, 120, 300, 900, 2400], max_length=20,
        description="seconds before each retry of a failed delivery (JSON list); attempts are "
                    "one more than retries: 6 over about an hour by default")
    webhook_queue: str = Field(
        default="webhooks", description="Celery queue of webhook deliveries, apart from the "
                                        "jobs so a slow receiver never holds up a training")
    migrate_on_start: bool = Field(
        default=True,
        description="apply Alembic migrations at startup (off when a migrate step runs)",
    )

    @field_validator("backbones")
    @classmethod
    def _known_backbones(cls, value: str) -> str:
        parse_backbones(value)  # raises ValueError naming the valid choices
        return value.strip()

    @model_validator(mode="after")
    def _refuse_unsafe_production(self) -> Settings:
        if self.environment == "production" and self.create_first_account:
            raise ValueError(
                "NANONET_CREATE_FIRST_ACCOUNT must be false in production: create accounts with "
                "`nanonet keys create NAME` or NANONET_BOOTSTRAP_API_KEY"
            )
        return self

    @property
    def resolved_database_url(self) -> str:
        return self.database_url or f"sqlite:///{self.data_dir.resolve() / 'nanonet.db'}"

    @property
    def candidate_backbones(self) -> list[str]:
        """The backbones model selection may choose from, in the order given, whose weights are
        installed here."""
        from app.ml.backbones import available_backbones  # imports torch: not at import time
        from app.ml.registry import BACKBONES

        installed = set(available_backbones())
        return [
            name
            for name in parse_backbones(self.backbones)
            if set(BACKBONES[name].components) <= installed
        ]

    @property
    def views(self) -> int:
        """How many feature views each training image has: the eval view plus augmentations."""
        from app.ml.augment import DEFAULT_VIEWS

        return 1 + (DEFAULT_VIEWS if self.augment_views is None else self.augment_views)

    @property
    def images_dir(self) -> Path:
        return self.data_dir / "images"

    @property
    def features_dir(self) -> Path:
        return self.data_dir / "features"

    @property
    def thumbnails_dir(self) -> Path:
        return self.data_dir / "thumbnails"

    @property
    def models_dir(self) -> Path:
        return self.data_dir / "models"

    @property
    def torch_device(self) -> str:
        if self.device != "auto":
            return self.device
        import torch

        return "cuda" if torch.cuda.is_available() else "cpu"
