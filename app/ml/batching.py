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
MobileNetV2 predict's 7 ms); it runs in its own thread then, sparing the hand-off to a lane
thread and back. Callers that never announce keep the plain window.

Where the inner runner offers single-threaded passes (engines.bulk_runner: an OnnxRunner, one
per core), each backbone has one lane thread per core. A call that finds the lane alone (no
other call of it running, nothing else waiting, nobody announced) runs on the inner runner's
pooled session, every core on one image: the lowest latency. Under load each lane thread runs
its batch single-threaded instead, as many at once as there are cores: independent passes
without the pool's per-operator barriers, which a predict's decoding would otherwise stall
(docs/EXPERIMENTS.md, "Serving overhead").

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

from app.ml.engines import Runner, bulk_runner

log = logging.getLogger(__name__)


@dataclass
class _Pending:
    batch: np.ndarray
    arrived: float
    announced: bool  # its caller was inside runner.preparing()
    future: Future[np.ndarray] = field(default_factory=Future)


class _Lane:
    """One backbone's queue and the threads that empty it (one per core the engine offers)."""

    def __init__(self, runner: BatchingRunner, backbone: str) -> None:
        self.runner = runner
        self.backbone = backbone
        self.waiting: deque[_Pending] = deque()
        self.images = 0  # rows waiting, in all
        self.running = 0  # inner calls of this lane under way
        self.ready = runner.changed  # one condition for all lanes: `preparing` is shared
        single, streams = bulk_runner(runner.inner)
        self.single: Runner | None = single if streams > 1 else None
        self.threads = [threading.Thread(target=self._serve, name=f"microbatch-{backbone}-{i}",
                                         daemon=True) for i in range(streams)]
        for thread in self.threads:
            thread.start()

    def submit(self, batch: np.ndarray, *, announced: bool) -> Future[np.ndarray]:
        """Queue the batch (the caller holds self.ready)."""
        pending = _Pending(batch, time.monotonic(), announced)
        self.waiting.append(pending)
        self.images += len(batch)
        self.ready.notify_all()
        return pending.future

    def _take(self) -> tuple[list[_Pending], bool]:
        """Wait for work; return the oldest batches that fit in max_size, once the window of
        the oldest has passed, max_size images wait, or (the oldest announced) no announced
        caller is still preparing; and whether this call is alone (nothing else running,
        waiting or announced). Counts the call as running."""
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
                if not self.waiting:  # another thread of this lane took them meanwhile
                    return [], False
            taken, size = [], 0
            while self.waiting and size + len(self.waiting[0].batch) <= max_size:
                pending = self.waiting.popleft()
                size += len(pending.batch)
                taken.append(pending)
            self.images -= size
            alone = self.idle()
            self.start()
            return taken, alone

    def idle(self) -> bool:
        """Whether nothing of this lane runs or waits and nobody announced is still preparing
        (the caller holds self.ready)."""
        return self.running == 0 and not self.waiting and self.runner.preparing_now == 0

    def start(self) -> None:
        """Count an inner call as running (the caller holds self.ready)."""
        self.running += 1
        self.runner.calls += 1

    def finish(self) -> None:
        with self.ready:
            self.running -= 1

    def _serve(self) -> None:
        while True:
            taken, alone = self._take()
            if not taken:
                continue
            engine = self.runner.inner if alone or self.single is None else self.single
            try:
                if len(taken) == 1:
                    features = engine.run(self.backbone, taken[0].batch)
                else:
                    joined = np.concatenate([pending.batch for pending in taken])
                    features = engine.run(self.backbone, joined)
            except BaseException as exc:  # noqa: BLE001  (each caller gets it; the lane lives)
                for pending in taken:
                    pending.future.set_exception(exc)
                continue
            finally:
                self.finish()
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
            announced = self._leave()
            alone = announced and lane.idle()
            if alone:  # what a lane thread would do at once: do it here, a hand-off less
                lane.start()
            else:
                future = lane.submit(batch, announced=announced)
        if not alone:
            return future.result()
        try:
            return self.inner.run(backbone, batch)
        finally:
            lane.finish()

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
