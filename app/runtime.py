"""The process-wide parts (DB engine, stores, job queue, head cache), built once at startup."""

from __future__ import annotations

import threading
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from sqlalchemy import Engine
from sqlalchemy.orm import Session, sessionmaker

from app.config import Settings
from app.db.engine import make_engine, make_session_factory
from app.storage import BlobStore

if TYPE_CHECKING:
    from app.ml.cache import FeatureCache
    from app.ml.heads import Head


class JobQueue(Protocol):
    """Where committed job ids go: app.jobs.inprocess or app.jobs.celery_queue, chosen in main."""

    def submit(self, job_id: str, *, lane: str = "jobs", delay: float = 0.0) -> None:
        """Hand a committed job row to the backend; must not block on the job itself.

        `lane`: "jobs" (training, extraction, batches) or "webhooks" (deliveries, which run
        apart so a slow receiver never holds up a job); `delay`: seconds before it may run.
        """

    def start(self) -> None: ...

    def stop(self) -> None: ...


class HeadCache:
    """A small LRU of loaded heads: one server holds many NanoNets, each head is kilobytes."""

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self._items: OrderedDict[str, tuple[Head, dict[str, Any]]] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, path: Path) -> tuple[Head, dict[str, Any]]:
        from app.ml.artifacts import load_artifact

        key = str(path)
        with self._lock:
            if key in self._items:
                self._items.move_to_end(key)
                return self._items[key]
        loaded = load_artifact(path)
        with self._lock:
            self._items[key] = loaded
            while len(self._items) > self.capacity:
                self._items.popitem(last=False)
        return loaded

    def forget(self, path: Path) -> None:
        """Drop a deleted version's head."""
        with self._lock:
            self._items.pop(str(path), None)


@dataclass
class Runtime:
    settings: Settings
    engine: Engine
    session_factory: sessionmaker[Session]
    blobs: BlobStore
    heads: HeadCache
    queue: JobQueue | None = None
    _features: FeatureCache | None = field(default=None, repr=False)

    @property
    def features(self) -> FeatureCache:
        if self._features is None:
            from app.ml.cache import FeatureCache

            self._features = FeatureCache(self.settings.features_dir)
        return self._features

    @property
    def device(self) -> str:
        return self.settings.torch_device

    def close(self) -> None:
        if self.queue is not None:
            self.queue.stop()
        self.engine.dispose()


def build_runtime(settings: Settings) -> Runtime:
    """Return a Runtime for `settings`; connects lazily, starts nothing."""
    engine = make_engine(settings.resolved_database_url)
    return Runtime(
        settings=settings,
        engine=engine,
        session_factory=make_session_factory(engine),
        blobs=BlobStore(settings.images_dir),
        heads=HeadCache(settings.head_cache_size),
    )
