"""Micro-batching: concurrent callers of one backbone share one backbone call.

`BatchingRunner` wraps a Runner. A caller's preprocessed batch goes into its backbone's queue
and the caller waits on a future; one thread per backbone takes the oldest waiting batch, waits
until `window_s` after that batch arrived for others (or until `max_size` images are waiting),
joins what fits into one array, runs the inner runner once, and hands each caller its own rows.
An exception of that call goes to every caller in it.

Why: on a CPU each backbone call already uses every core (ONNX Runtime's intra-op pool), so N
predicts running N calls at once only fight over the cores and the caches, and throughput falls
as clients are added; one call at a time per backbone, fed batches of whatever has arrived
meanwhile, keeps the cores busy with one pass and lets decoding (in the request threads, the
GIL released by Pillow and ONNX Runtime) overlap it. The window only matters when the backbone
is idle: batches that arrived while it ran are older than the window and go at once.

A caller that announces itself first (`with runner.preparing():` around its decoding) lets
the lane skip the window: once no announced caller is still preparing, nobody the window could
wait for is coming, and a lone request runs at once instead of idling `window_s` (2 of a
MobileNetV2 predict's 7 ms). Callers that never announce keep the plain window.

A batch larger than `max_size` (a job extracting features in big chunks) is not split: it runs
in the caller's thread, as without batching. `window_s <= 0` makes the wrapper a passthrough.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Iterator
from concurrent.futures import Future
from contextlib import contextmanager
from dataclasses import dataclass, field

import numpy as np

from app.ml.engines import Runner

log = logging.getLogger(__name__)


@dataclass
class _Pending:
    batch: np.ndarray
    arrived: float
    announced: bool  # its caller was inside runner.preparing()
    future: Future[np.ndarray] = field(default_factory=Future)


class _Lane:
    """One backbone's queue and the thread that empties it."""

    def __init__(self, runner: BatchingRunner, backbone: str) -> None:
        self.runner = runner
        self.backbone = backbone
        self.waiting: deque[_Pending] = deque()
        self.images = 0  # rows waiting, in all
        self.ready = runner.changed  # one condition for all lanes: `preparing` is shared
        self.thread = threading.Thread(target=self._serve, name=f"microbatch-{backbone}",
                                       daemon=True)
        self.thread.start()

    def submit(self, batch: np.ndarray, *, announced: bool) -> Future[np.ndarray]:
        """Queue the batch (the caller holds self.ready)."""
        pending = _Pending(batch, time.monotonic(), announced)
        self.waiting.append(pending)
        self.images += len(batch)
        self.ready.notify_all()
        return pending.future

    def _take(self) -> list[_Pending]:
        """Wait for work; return the oldest batches that fit in max_size, once the window of
        the oldest has passed, max_size images wait, or (the oldest announced) no announced
        caller is still preparing."""
        window, max_size = self.runner.window_s, self.runner.max_size
        with self.ready:
            while not self.waiting:
                self.ready.wait()
            deadline = self.waiting[0].arrived + window
            while self.images < max_size:
                if self.waiting[0].announced and self.runner.preparing_now == 0:
                    break
                left = deadline - time.monotonic()
                if left <= 0:
                    break
                self.ready.wait(left)
            taken, size = [], 0
            while self.waiting and size + len(self.waiting[0].batch) <= max_size:
                pending = self.waiting.popleft()
                size += len(pending.batch)
                taken.append(pending)
            self.images -= size
            return taken

    def _serve(self) -> None:
        while True:
            taken = self._take()
            try:
                self.runner.calls += 1
                if len(taken) == 1:
                    features = self.runner.inner.run(self.backbone, taken[0].batch)
                else:
                    joined = np.concatenate([pending.batch for pending in taken])
                    features = self.runner.inner.run(self.backbone, joined)
            except BaseException as exc:  # noqa: BLE001  (each caller gets it; the lane lives)
                for pending in taken:
                    pending.future.set_exception(exc)
                continue
            start = 0
            for pending in taken:
                end = start + len(pending.batch)
                pending.future.set_result(features[start:end])
                start = end


class BatchingRunner:
    """A Runner that merges concurrent calls for one backbone into one call of `inner`."""

    def __init__(self, inner: Runner, *, window_s: float, max_size: int) -> None:
        if max_size < 1:
            raise ValueError(f"max_size must be >= 1, got {max_size}")
        self.inner = inner
        self.window_s = window_s
        self.max_size = max_size
        self.calls = 0  # calls of inner made by the lanes (for tests and logs)
        self.changed = threading.Condition()  # guards the lanes' queues and preparing_now
        self.preparing_now = 0  # announced callers that have not called run() yet
        self._announced = threading.local()
        self._lanes: dict[str, _Lane] = {}
        self._lock = threading.Lock()

    @contextmanager
    def preparing(self) -> Iterator[None]:
        """Announce that this thread will call run() soon (it is decoding its images): until
        it does, or leaves the block, lanes wait out their window for it."""
        if getattr(self._announced, "active", False):  # nested: already counted
            yield
            return
        with self.changed:
            self.preparing_now += 1
            self._announced.active = True
        try:
            yield
        finally:
            with self.changed:
                self._leave()  # when it never called run()

    def _leave(self) -> bool:
        """End this thread's announcement, if it has one; return whether it had. The caller
        holds self.changed."""
        if not getattr(self._announced, "active", False):
            return False
        self._announced.active = False
        self.preparing_now -= 1
        self.changed.notify_all()
        return True

    def run(self, backbone: str, batch: np.ndarray) -> np.ndarray:
        if self.window_s <= 0 or len(batch) > self.max_size or len(batch) == 0:
            with self.changed:
                self._leave()  # it waits in no lane: no lane should wait for it
            return self.inner.run(backbone, batch)
        lane = self._lane(backbone)
        with self.changed:  # atomically: no lane sees it neither preparing nor queued
            future = lane.submit(batch, announced=self._leave())
        return future.result()

    def _lane(self, backbone: str) -> _Lane:
        with self._lock:
            lane = self._lanes.get(backbone)
            if lane is None:
                lane = self._lanes[backbone] = _Lane(self, backbone)
            return lane

    def __getattr__(self, name: str) -> object:
        # The inner runner's own attributes (OnnxRunner.session, .threads...) stay reachable.
        if name == "inner":
            raise AttributeError(name)
        return getattr(self.inner, name)
