"""Requests per minute per account, counted by the `limits` library: in memory for the
embedded default (one process), in Redis for the full stack (every API process shares it)."""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass

from fastapi import Request
from limits import RateLimitItem, RateLimitItemPerMinute
from limits.storage import MemoryStorage, RedisStorage, Storage
from limits.strategies import MovingWindowRateLimiter

from app.api.deps import AccountDep
from app.config import Settings
from app.errors import RateLimited

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Rate:
    name: str  # the counter's name, and the action the 429 names
    setting: str  # the Settings field that sets it, for the message

    def item(self, settings: Settings) -> RateLimitItem:
        return RateLimitItemPerMinute(getattr(settings, self.setting))


PREDICTIONS = Rate("predictions", "predictions_per_minute")
UPLOADS = Rate("uploads", "uploads_per_minute")


class RateLimiter:
    """A moving one-minute window per (rate, account); its storage is process memory or Redis."""

    def __init__(self, settings: Settings, storage: Storage) -> None:
        self.settings = settings
        self.storage = storage
        self._limiter = MovingWindowRateLimiter(storage)

    def hit(self, rate: Rate, account_id: str) -> None:
        """Count one request; raises RateLimited (429, Retry-After) past the rate."""
        item = rate.item(self.settings)
        try:
            allowed = self._limiter.hit(item, rate.name, account_id)
        except Exception:  # noqa: BLE001  (a limiter outage must not take the API down with it)
            log.warning("rate_limit.unavailable rate=%s", rate.name, exc_info=True)
            return
        if allowed:
            return
        reset_at = self._limiter.get_window_stats(item, rate.name, account_id).reset_time
        retry_after = max(1, math.ceil(reset_at - time.time()))
        raise RateLimited(
            f"Too many {rate.name} requests: at most {item.amount} per minute per account "
            f"(NANONET_{rate.setting.upper()}). Retry in {retry_after} s.",
            retry_after=retry_after)


    def close(self) -> None:
        """Close the Redis client's connections, if any (the memory storage holds none)."""
        if isinstance(self.storage, RedisStorage):
            self.storage.storage.close()


def build_rate_limiter(settings: Settings) -> RateLimiter:
    """Return the limiter for this deployment; builds no connection (Redis connects on use)."""
    storage: Storage = (RedisStorage(settings.redis_url)
                        if settings.job_backend == "celery" else MemoryStorage())
    return RateLimiter(settings, storage)


def count(request: Request, rate: Rate, account_id: str) -> None:
    """Count one request of `rate` against its account: raises RateLimited past the rate. For
    the API's dependencies below and for the web form's routes, which share the counters."""
    limiter: RateLimiter | None = getattr(request.app.state, "rate_limiter", None)
    if limiter is None:  # an app assembled without main's lifespan
        limiter = request.app.state.rate_limiter = build_rate_limiter(
            request.app.state.runtime.settings)
    limiter.hit(rate, account_id)


def limit_predictions(request: Request, account: AccountDep) -> None:
    """Route dependency: count a predict or batch-prediction request against its account."""
    count(request, PREDICTIONS, account.id)


def limit_uploads(request: Request, account: AccountDep) -> None:
    """Route dependency: count an image upload request against its account."""
    count(request, UPLOADS, account.id)
