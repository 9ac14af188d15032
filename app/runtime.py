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

    def submit(self, job_id: str, *, lane: str = "jobs", kind: str | None = None,
               delay: float = 0.0) -> None:
        """Hand a committed job row to the backend; must not block on the job itself.

        `lane`: "jobs" (training, extraction, batches) or "webhooks" (deliveries, which run
        apart so a slow receiver never holds up a job); `kind`: the job's kind, by which the
        Celery backend picks its queue (settings.job_routes; None: settings.job_queue);
        `delay`: seconds before it may run.
        """

    def start(self) -> None: ...

    def stop(self) -> None: ...


class InferenceSlots:
    """At most `slots` predict requests at once decode their images and wait for (or share)
    a backbone call; the others wait up to `wait` seconds. The backbone itself runs one merged
    call per backbone at a time (app.ml.batching), so this bounds the decoded images held and
    the decode threads: without it a burst of predicts multiplies memory and makes every one
    of them (and /health) slow. Slots above microbatch_max_size add no batching.
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
    """An LRU of loaded heads bounded by their memory: one server holds many NanoNets, and a
    head is kilobytes (logistic) to megabytes (a prototype head and an unknown detector over
    a wide backbone, with many categories), so a count would bound nothing.

    `capacity_bytes` caps the sum of size_of(head, meta) over the heads kept; the least
    recently used go first. A head bigger than the whole cap is still returned, just not kept.
    """

    def __init__(self, capacity_bytes: int) -> None:
        self.capacity_bytes = capacity_bytes
        self.bytes = 0  # size_of of every head kept
        self._items: OrderedDict[str, tuple[tuple[Head, dict[str, Any]], int]] = OrderedDict()
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self._items)

    def get(self, path: Path) -> tuple[Head, dict[str, Any]]:
        from app.ml.artifacts import load_artifact

        key = str(path)
        with self._lock:
            if key in self._items:
                self._items.move_to_end(key)
                return self._items[key][0]
        loaded = load_artifact(path)
        size = size_of(loaded)
        with self._lock:
            previous = self._items.pop(key, None)
            if previous is not None:  # loaded twice at once: keep one
                self.bytes -= previous[1]
            if size <= self.capacity_bytes:
                self._items[key] = (loaded, size)
                self.bytes += size
            while self.bytes > self.capacity_bytes:
                _, (_, dropped) = self._items.popitem(last=False)
                self.bytes -= dropped
        return loaded

    def forget(self, path: Path) -> None:
        """Drop a deleted version's head."""
        with self._lock:
            item = self._items.pop(str(path), None)
            if item is not None:
                self.bytes -= item[1]


def size_of(value: object, _seen: set[int] | None = None) -> int:
    """Bytes `value` holds, roughly: numpy arrays' nbytes, plus sys.getsizeof of every object
    reached through dataclass fields, dicts, lists and tuples (each counted once)."""
    import dataclasses
    import sys

    import numpy as np

    seen = set() if _seen is None else _seen
    if id(value) in seen:
        return 0
    seen.add(id(value))
    if isinstance(value, np.ndarray):
        return int(value.nbytes) + sys.getsizeof(np.empty(0))
    size = sys.getsizeof(value)
    if isinstance(value, dict):
        size += sum(size_of(k, seen) + size_of(v, seen) for k, v in value.items())
    elif isinstance(value, list | tuple | set | frozenset):
        size += sum(size_of(item, seen) for item in value)
    elif dataclasses.is_dataclass(value) and not isinstance(value, type):
        size += sum(size_of(getattr(value, f.name), seen) for f in dataclasses.fields(value))
    return size


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
        """What runs the backbones in this process (app.ml.engines), made on first use: one
        per process, so one copy of each backbone; with microbatch_window_ms > 0 wrapped in
        app.ml.batching.BatchingRunner, which merges concurrent calls per backbone."""
        with self._runner_lock:
            if self._runner is None:
                from app.ml.engines import make_runner

                settings = self.settings
                runner = make_runner(settings.torch_device, settings.engines_dir,
                                     engine=settings.engine, threads=settings.onnx_threads,
                                     spin=settings.onnx_spin)
                if settings.microbatch_window_ms > 0:  # concurrent predicts share a call
                    from app.ml.batching import BatchingRunner

                    runner = BatchingRunner(runner, window_s=settings.microbatch_window_ms / 1000,
                                            max_size=settings.microbatch_max_size)
                self._runner = runner
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
