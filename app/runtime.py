"""The process-wide parts (DB engine, stores, job queue, head cache), built once at startup."""

from __future__ import annotations

import math
import threading
from collections import OrderedDict
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from sqlalchemy import Engine
from sqlalchemy.orm import Session, sessionmaker

from app.config import Settings
from app.db.engine import make_engine, make_session_factory
from app.errors import Busy
from app.security import SECRET_FILE, SECRET_INFO, ServerSecret
from app.storage import BlobStore

if TYPE_CHECKING:
    from app.ml.cache import FeatureCache
    from app.ml.engines import Runner
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


class InferenceSlots:
    """At most `slots` callers at once run the backbone for a request; the others wait up to
    `wait` seconds. Each pass holds hundreds of MB and every core torch may use, so without a
    bound a burst of predicts multiplies memory and makes every one of them (and /health) slow.
    """

    def __init__(self, slots: int, *, wait: float) -> None:
        self.slots = slots
        self.wait = wait
        self._semaphore = threading.BoundedSemaphore(slots)

    @contextmanager
    def hold(self) -> Iterator[None]:
        """Run the body in a slot; raises Busy (503, Retry-After) if none frees up in time."""
        if not self._semaphore.acquire(timeout=self.wait):
            raise Busy(f"All {self.slots} inference slots stayed busy for {self.wait:g} s; "
                       "retry shortly (NANONET_INFERENCE_SLOTS sets how many run at once).",
                       retry_after=max(1, math.ceil(self.wait)))
        try:
            yield
        finally:
            self._semaphore.release()


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
    secret: ServerSecret
    inference: InferenceSlots
    queue: JobQueue | None = None
    _features: FeatureCache | None = field(default=None, repr=False)
    _runner: Runner | None = field(default=None, repr=False)
    _runner_lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    @property
    def features(self) -> FeatureCache:
        if self._features is None:
            from app.ml.cache import FeatureCache

            self._features = FeatureCache(self.settings.features_dir)
        return self._features

    @property
    def runner(self) -> Runner:
        """What runs the backbones in this process (app.ml.engines), made on first use."""
        with self._runner_lock:
            if self._runner is None:
                from app.ml.engines import make_runner

                settings = self.settings
                self._runner = make_runner(settings.torch_device, settings.engines_dir,
                                           engine=settings.engine,
                                           threads=settings.onnx_threads)
            return self._runner

    def close(self) -> None:
        if self.queue is not None:
            self.queue.stop()
        self.engine.dispose()


def build_runtime(settings: Settings) -> Runtime:
    """Return a Runtime for `settings`; connects lazily, starts nothing. Caps torch's threads
    (NANONET_TORCH_THREADS) here, before any torch work, for the server and workers alike."""
    if settings.torch_threads is not None:
        from app.ml.threads import set_torch_threads

        set_torch_threads(settings.torch_threads)
    engine = make_engine(settings.resolved_database_url)
    configured = settings.secret_key
    secret = ServerSecret(configured=configured.get_secret_value() if configured else None,
                          path=settings.data_dir / SECRET_FILE)
    session_factory = make_session_factory(engine)
    session_factory.configure(info={SECRET_INFO: secret})  # for services given only a session
    return Runtime(
        settings=settings,
        engine=engine,
        session_factory=session_factory,
        blobs=BlobStore(settings.images_dir),
        heads=HeadCache(settings.head_cache_bytes),
        secret=secret,
        inference=InferenceSlots(settings.inference_slots, wait=settings.inference_wait_seconds),
    )
