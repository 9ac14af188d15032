"""One Settings object: every knob of the service, read from NANONET_* environment variables."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, SecretStr, ValidationInfo, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from app.ml.registry import parse_backbones
from app.security import MIN_SECRET_CHARS

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
    job_routes: dict[str, str] = Field(
        default_factory=dict,
        description="Celery queue per job kind (`train`, `extract`, `batch_predict`), as JSON, "
                    "e.g. {\"train\": \"gpu\"}; a kind not named goes to job_queue")
    job_visibility_timeout: int = Field(
        default=6 * 3600, ge=60,
        description="Seconds a Celery job may stay unacknowledged before Redis hands it to "
        "another worker as lost; keep it above the longest training",
    )
    # jobs: leases, reconciler, timeouts, fairness
    job_heartbeat_interval: float = Field(
        default=10, gt=0, le=600,
        description="seconds between renewals of a running job's lease by its worker")
    job_lease_seconds: float = Field(
        default=30, gt=0,
        description="how long one renewal holds a running job: past it the worker counts as "
                    "gone and the reconciler requeues the job (or fails it, out of attempts)")
    job_reconcile_interval: float = Field(
        default=10, gt=0, le=3600,
        description="seconds between reconciler passes, in the embedded runner and in every "
                    "Celery worker process")
    job_resend_after: float = Field(
        default=300, gt=0,
        description="a queued job still unclaimed this many seconds after it was due is sent "
                    "to the queue again (its message may never have left); duplicates are "
                    "harmless")
    training_timeout: float = Field(
        default=3 * 3600, gt=0,
        description="seconds one training attempt may run before it is stopped and failed")
    job_account_max_running: int = Field(
        default=1, ge=1,
        description="jobs (webhook deliveries aside) one account may run at once while "
                    "another account's jobs wait; alone, an account may use every worker")
    job_account_retry_delay: float = Field(
        default=5, gt=0, le=600,
        description="seconds before a job held back by its account's cap is tried again")
    device: Literal["cpu", "cuda", "auto"] = "cpu"
    engine: Literal["auto", "onnx", "torch"] = Field(
        default="auto",
        description="what runs the backbones: `onnx` (ONNX Runtime, CPU only), `torch`, or "
                    "`auto`: ONNX Runtime on a CPU, torch on a GPU")
    onnx_threads: int | None = Field(
        default=None, ge=1,
        description="intra-op threads of a pooled ONNX Runtime session, and how many "
                    "single-threaded passes feature extraction and busy predict lanes run at "
                    "once; unset: every core")
    onnx_spin: bool = Field(
        default=False,
        description="keep a pooled ONNX Runtime session's threads spin-waiting after a run "
                    "too (ONNX Runtime's default); off, they spin only between a run's "
                    "operators and park when it returns, leaving the cores to decoding and the "
                    "web server (docs/EXPERIMENTS.md, Threads)")
    engine_cache_dir: Path | None = Field(
        default=None,
        description="where the ONNX exports of the backbones are kept (one per weights hash "
                    "and export recipe); unset: `engines` in the data dir")
    torch_threads: int | None = Field(
        default=None, ge=1,
        description="torch intra-op and inter-op threads, set once per process at startup; "
                    "unset: torch's default (every core)")

    backbones: str = Field(
        default="auto",
        description="comma-separated candidate backbones for model selection, `auto` for the "
                    "default set, `all` for every registered one (whose weights are installed)",
    )
    augment_views: int | None = Field(
        default=None, ge=0, le=16,
        description="augmented views per training image; unset: 2 while the smallest category "
                    "has fewer than 40 images, none from there on (the benchmarked default)",
    )
    extract_on_upload: bool = Field(
        default=True, description="extract features in the background as soon as images arrive"
    )
    feature_batch_size: int = Field(default=16, ge=1, le=256)

    max_file_bytes: int = Field(default=20 * MiB, ge=1)
    max_image_pixels: int = Field(default=40_000_000, ge=1)
    max_files_per_request: int = Field(default=500, ge=1)
    max_request_bytes: int = Field(default=1024 * MiB, ge=1)
    # intake: body limits, pixel budget, sweep
    max_json_bytes: int = Field(
        default=1 * MiB, ge=1,
        description="bytes of a request body that is not multipart (JSON, web forms); a "
                    "multipart body may have max_request_bytes. Counted as the body arrives, "
                    "chunked or not, and refused with 413 before it is read further")
    key_check_unread_above: int = Field(
        default=256 * 1024, ge=0,
        description="an /api body larger than this (by its Content-Length), or chunked, must "
                    "carry a valid key before a byte of it is read; a smaller one is read first "
                    "and its key checked by the route, before any of it is used, which spares "
                    "a predict a thread hand-off and a second key lookup. 0: every body "
                    "unread until its key is checked")
    max_request_pixels: int = Field(
        default=1_000_000_000, ge=1,
        description="decoded pixels one request may cost in all, summed from the image headers "
                    "before decoding; files past it are refused (413 pixel_budget_exceeded)")
    orphan_grace_seconds: float = Field(
        default=3600, ge=0,
        description="the startup sweep removes stored images no row refers to only once they "
                    "are this old, so an upload still on its way to its commit keeps its files")

    # limits: quotas, rates, inference slots
    max_models_per_account: int = Field(
        default=1000, ge=1, description="models one account may have (409 model_quota_exceeded)")
    max_images_per_model: int = Field(
        default=10_000, ge=1,
        description="images (labelled and pool) one model may hold (409 image_quota_exceeded)")
    predictions_per_minute: int = Field(
        default=120, ge=1,
        description="predict and batch-prediction requests per account per minute (429)")
    uploads_per_minute: int = Field(
        default=60, ge=1, description="image upload requests per account per minute (429)")
    min_free_disk_bytes: int = Field(
        default=1024 * MiB, ge=0,
        description="free bytes the data dir must keep after an upload; below it the upload is "
                    "refused (507 insufficient_storage)")
    inference_slots: int = Field(
        default=8, ge=1, le=64,
        description="predict requests decoding and waiting for (or sharing) a backbone call "
                    "at once in this process; the rest wait for a slot. Their backbone passes "
                    "are merged (microbatch_*), so this bounds decoded images held, not passes")
    inference_wait_seconds: float = Field(
        default=10, ge=0, le=300,
        description="seconds a predict request waits for an inference slot before its 503 busy")
    microbatch_window_ms: float = Field(
        default=2.0, ge=0, le=100,
        description="milliseconds a predict waits for others to share one backbone call; 0 "
                    "runs each request alone")
    microbatch_max_size: int = Field(
        default=32, ge=1, le=256,
        description="most images in one shared backbone call of concurrent predicts")

    bootstrap_api_key: SecretStr | None = None
    create_first_account: bool = Field(
        default=True, description="on a first start with no account, create one and print its key"
    )
    head_cache_bytes: int = Field(
        default=256 * MiB, ge=1,
        description="memory the loaded heads may take in each process; least recently used "
                    "heads are dropped past it and read again from their files when asked for")
    keep_versions: int = Field(
        default=10, ge=1,
        description="versions kept per model; the oldest inactive ones and their files go first")

    url_allow_private: bool = Field(
        default=False,
        description="let webhooks (and URL uploads) reach loopback, private, link-local and "
                    "cloud-metadata addresses; for tests and closed networks only")
    url_fetch_timeout: float = Field(
        default=10.0, gt=0, le=120,
        description="seconds fetching one image by URL may take in all: every redirect and "
                    "the whole body; a server too slow is reported for that URL only")
    url_connect_timeout: float = Field(
        default=5.0, gt=0, le=60,
        description="seconds each connection attempt of a URL fetch may take (within "
                    "url_fetch_timeout)")
    url_max_redirects: int = Field(
        default=3, ge=0, le=10,
        description="redirects one URL fetch follows, each checked like the URL itself; one "
                    "more is refused (too_many_redirects)")
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

    # keys, sessions and the web
    secret_key: SecretStr | None = Field(
        default=None,
        description="server secret (32+ characters) keying API key digests, web sessions and "
                    "CSRF tokens; unset: generated into data_dir/secret_key on first use. "
                    "Changing or losing it invalidates every API key")
    session_max_age: int = Field(
        default=12 * 3600, ge=60, description="seconds a web sign-in lasts")
    forwarded_allow_ips: str | None = Field(
        default=None,
        description="comma list of proxy addresses (or `*`) whose X-Forwarded-Proto and "
                    "X-Forwarded-For are believed; unset: none, the connection decides")
    docs: bool = Field(default=True, description="serve the Swagger UI at /docs")

    @field_validator("bootstrap_api_key", "secret_key")
    @classmethod
    def _long_enough(cls, value: SecretStr | None, info: ValidationInfo) -> SecretStr | None:
        if value is not None and len(value.get_secret_value()) < MIN_SECRET_CHARS:
            raise ValueError(
                f"NANONET_{(info.field_name or '').upper()} is "
                f"{len(value.get_secret_value())} characters; it must be at least "
                f"{MIN_SECRET_CHARS} (e.g. `python -c 'import secrets; "
                f"print(secrets.token_urlsafe(32))'`)")
        return value

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

    @model_validator(mode="after")
    def _lease_outlasts_heartbeats(self) -> Settings:
        if self.job_lease_seconds < 2 * self.job_heartbeat_interval:
            raise ValueError(
                "NANONET_JOB_LEASE_SECONDS must be at least twice NANONET_JOB_HEARTBEAT_INTERVAL: "
                "one late renewal must not make a live job look abandoned")
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

    def views_for(self, smallest_class: int) -> int:
        """How many feature views each training image has, the eval view plus augmentations,
        for a data set whose smallest category has `smallest_class` images."""
        from app.ml.augment import augmented_views

        augmented = (augmented_views(smallest_class) if self.augment_views is None
                     else self.augment_views)
        return 1 + augmented

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
    def engines_dir(self) -> Path:
        return self.engine_cache_dir or self.data_dir / "engines"

    @property
    def models_dir(self) -> Path:
        return self.data_dir / "models"

    @property
    def torch_device(self) -> str:
        if self.device != "auto":
            return self.device
        import torch

        return "cuda" if torch.cuda.is_available() else "cpu"
