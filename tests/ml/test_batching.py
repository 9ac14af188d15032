"""BatchingRunner: concurrent calls for one backbone become one inner call, each caller gets
exactly its own rows, max_size holds, errors reach every caller, window 0 passes through."""

from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

from app.ml.batching import BatchingRunner


class Recorder:
    """A fake backbone: features are a fixed function of each row alone, and every call's
    (backbone, batch size) is recorded. `gate`, when set, holds calls until released; `delay`
    makes each call take that long."""

    def __init__(self, *, fail: bool = False, delay: float = 0.0) -> None:
        self.calls: list[tuple[str, int]] = []
        self.fail = fail
        self.delay = delay
        self.gate: threading.Event | None = None
        self.entered = threading.Event()
        self._lock = threading.Lock()

    def run(self, backbone: str, batch: np.ndarray) -> np.ndarray:
        with self._lock:
            self.calls.append((backbone, len(batch)))
        self.entered.set()
        time.sleep(self.delay)
        if self.gate is not None:
            assert self.gate.wait(10)
        if self.fail:
            raise RuntimeError("backbone exploded")
        flat = batch.reshape(len(batch), -1)
        return np.stack([flat.sum(axis=1), flat.max(axis=1), flat[:, 0]], axis=1)


def batch_of(seed: int, rows: int = 1) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((rows, 3, 4, 4)).astype(np.float32)


def run_at_once(runner: BatchingRunner, batches: list[np.ndarray],
                backbone: str = "mobilenet_v2") -> list[np.ndarray]:
    start = threading.Barrier(len(batches))

    def call(batch: np.ndarray) -> np.ndarray:
        start.wait()
        return runner.run(backbone, batch)

    with ThreadPoolExecutor(len(batches)) as pool:
        return list(pool.map(call, batches))


def test_concurrent_calls_are_merged_and_each_gets_exactly_its_rows() -> None:
    inner = Recorder()
    runner = BatchingRunner(inner, window_s=0.2, max_size=32)
    batches = [batch_of(seed, rows=1 + seed % 3) for seed in range(8)]
    results = run_at_once(runner, batches)
    assert len(inner.calls) < len(batches)  # merged (all 8 arrive well inside 200 ms)
    assert sum(size for _, size in inner.calls) == sum(len(b) for b in batches)
    for batch, result in zip(batches, results, strict=True):
        np.testing.assert_array_equal(result, Recorder().run("mobilenet_v2", batch))


def test_a_lone_call_waits_the_window_at_most_and_is_answered_alone() -> None:
    inner = Recorder()
    runner = BatchingRunner(inner, window_s=0.05, max_size=32)
    started = time.monotonic()
    out = runner.run("mobilenet_v2", batch_of(1))
    assert time.monotonic() - started < 1.0
    assert inner.calls == [("mobilenet_v2", 1)] and out.shape == (1, 3)


def test_max_size_is_never_exceeded_and_no_callers_batch_is_split() -> None:
    inner = Recorder()
    inner.gate = threading.Event()
    runner = BatchingRunner(inner, window_s=0.05, max_size=4)
    first = threading.Thread(target=runner.run, args=("mobilenet_v2", batch_of(0)))
    first.start()
    assert inner.entered.wait(5)  # the backbone is busy: the next ones pile up meanwhile
    batches = [batch_of(seed, rows=rows) for seed, rows in enumerate([3, 2, 1, 2, 1, 3], 1)]
    with ThreadPoolExecutor(len(batches)) as pool:
        futures = [pool.submit(runner.run, "mobilenet_v2", b) for b in batches]
        time.sleep(0.2)
        inner.gate.set()
        results = [future.result(10) for future in futures]
    first.join(5)
    assert all(size <= 4 for _, size in inner.calls)
    assert sum(size for _, size in inner.calls) == 1 + sum(len(b) for b in batches)
    assert len(inner.calls) < 1 + len(batches)  # some were merged
    for batch, result in zip(batches, results, strict=True):
        np.testing.assert_array_equal(result, Recorder().run("mobilenet_v2", batch))


def test_a_batch_past_max_size_passes_through_in_the_callers_thread() -> None:
    inner = Recorder()
    runner = BatchingRunner(inner, window_s=0.05, max_size=4)
    big = batch_of(3, rows=16)  # a training job's chunk
    np.testing.assert_array_equal(runner.run("efficientnet_lite2", big),
                                  Recorder().run("efficientnet_lite2", big))
    assert inner.calls == [("efficientnet_lite2", 16)] and runner.calls == 0


def test_backbones_are_never_mixed_in_one_call() -> None:
    inner = Recorder()
    runner = BatchingRunner(inner, window_s=0.1, max_size=32)
    start = threading.Barrier(6)

    def call(index: int) -> np.ndarray:
        start.wait()
        return runner.run("mobilenet_v2" if index % 2 else "efficientnet_lite2",
                          batch_of(index))

    with ThreadPoolExecutor(6) as pool:
        results = list(pool.map(call, range(6)))
    assert {name for name, _ in inner.calls} == {"mobilenet_v2", "efficientnet_lite2"}
    assert sum(size for _, size in inner.calls) == 6
    for index, result in enumerate(results):
        np.testing.assert_array_equal(result, Recorder().run("x", batch_of(index)))


def test_an_error_reaches_every_caller_of_that_call_and_the_runner_keeps_working() -> None:
    inner = Recorder(fail=True)
    runner = BatchingRunner(inner, window_s=0.2, max_size=32)
    errors: list[BaseException] = []

    def call(seed: int) -> None:
        try:
            runner.run("mobilenet_v2", batch_of(seed))
        except RuntimeError as exc:
            errors.append(exc)

    threads = [threading.Thread(target=call, args=(seed,)) for seed in range(5)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(10)
    assert len(errors) == 5 and all("exploded" in str(e) for e in errors)
    assert len(inner.calls) < 5
    inner.fail = False
    assert runner.run("mobilenet_v2", batch_of(9)).shape == (1, 3)  # the lane survived


def test_window_zero_is_a_passthrough() -> None:
    inner = Recorder()
    runner = BatchingRunner(inner, window_s=0, max_size=32)
    results = run_at_once(runner, [batch_of(seed) for seed in range(4)])
    assert inner.calls == [("mobilenet_v2", 1)] * 4 and runner.calls == 0
    assert all(result.shape == (1, 3) for result in results)


def test_max_size_must_be_positive() -> None:
    with pytest.raises(ValueError, match="max_size"):
        BatchingRunner(Recorder(), window_s=0.002, max_size=0)


def test_the_runtime_wraps_its_runner_when_the_window_is_set(tmp_path) -> None:  # noqa: ANN001
    from app.ml.engines import OnnxRunner
    from app.runtime import build_runtime
    from tests.conftest import make_settings

    batched = build_runtime(make_settings(tmp_path / "a", microbatch_window_ms=2,
                                          microbatch_max_size=8))
    assert isinstance(batched.runner, BatchingRunner)
    assert batched.runner.window_s == pytest.approx(0.002) and batched.runner.max_size == 8
    assert isinstance(batched.runner.inner, OnnxRunner)
    assert batched.runner is batched.runner  # one per process
    plain = build_runtime(make_settings(tmp_path / "b", microbatch_window_ms=0))
    assert isinstance(plain.runner, OnnxRunner)
    batched.close()
    plain.close()


def test_a_lone_announced_caller_skips_the_window() -> None:
    inner = Recorder()
    runner = BatchingRunner(inner, window_s=30, max_size=32)  # a window no test would wait out
    done = threading.Event()

    def call() -> None:
        with runner.preparing():
            runner.run("mobilenet_v2", batch_of(1))
        done.set()

    threading.Thread(target=call, daemon=True).start()
    assert done.wait(10)  # nobody else announced: it ran at once
    assert inner.calls == [("mobilenet_v2", 1)] and runner.preparing_now == 0


def test_the_lane_waits_for_an_announced_caller_still_decoding_and_merges_it() -> None:
    inner = Recorder()
    runner = BatchingRunner(inner, window_s=30, max_size=32)
    decoded, second_done = threading.Event(), threading.Event()
    results: dict[str, np.ndarray] = {}
    first_announced = threading.Event()

    def first() -> None:
        with runner.preparing():
            first_announced.set()
            results["first"] = runner.run("mobilenet_v2", batch_of(1))

    def second() -> None:
        with runner.preparing():
            assert decoded.wait(10)  # still decoding while the first one is queued
            results["second"] = runner.run("mobilenet_v2", batch_of(2))
        second_done.set()

    late = threading.Thread(target=second, daemon=True)
    late.start()
    while runner.preparing_now < 1:
        time.sleep(0.01)
    early = threading.Thread(target=first, daemon=True)
    early.start()
    assert first_announced.wait(10)
    early.join(0.3)
    assert early.is_alive() and inner.calls == []  # waiting for the second, not run alone
    decoded.set()
    assert second_done.wait(10)
    early.join(10)
    assert inner.calls == [("mobilenet_v2", 2)]  # one call for both
    np.testing.assert_array_equal(results["first"], Recorder().run("x", batch_of(1)))
    np.testing.assert_array_equal(results["second"], Recorder().run("x", batch_of(2)))


def test_an_announced_caller_that_gives_up_releases_the_lane() -> None:
    inner = Recorder()
    runner = BatchingRunner(inner, window_s=30, max_size=32)
    give_up = threading.Event()

    def failing_decoder() -> None:
        with pytest.raises(ValueError), runner.preparing():
            assert give_up.wait(10)
            raise ValueError("corrupt upload")  # leaves without calling run()

    quitter = threading.Thread(target=failing_decoder, daemon=True)
    quitter.start()
    while runner.preparing_now < 1:
        time.sleep(0.01)
    done = threading.Event()

    def call() -> None:
        with runner.preparing():
            runner.run("mobilenet_v2", batch_of(3))
        done.set()

    threading.Thread(target=call, daemon=True).start()
    assert not done.wait(0.3)  # the lane waits: someone announced is still decoding
    give_up.set()
    assert done.wait(10)
    quitter.join(10)
    assert runner.preparing_now == 0 and inner.calls == [("mobilenet_v2", 1)]


def test_callers_that_never_announce_keep_the_plain_window() -> None:
    inner = Recorder()
    runner = BatchingRunner(inner, window_s=5, max_size=2)  # max_size 2 ends the wait
    first = threading.Thread(target=runner.run, args=("mobilenet_v2", batch_of(1)), daemon=True)
    first.start()
    first.join(0.3)
    assert first.is_alive() and inner.calls == []  # waiting out its window for company
    assert runner.run("mobilenet_v2", batch_of(2)).shape == (1, 3)
    first.join(10)
    assert inner.calls == [("mobilenet_v2", 2)]


class Streams(Recorder):
    """An engine offering `streams` single-threaded passes (as OnnxRunner does): calls of the
    pooled engine go to `calls`, single-threaded ones to `single.calls`; `single` counts how
    many of its calls overlap."""

    def __init__(self, streams: int = 2) -> None:
        super().__init__()
        self.streams = streams
        self.single_threaded = self.single = Recorder()
        self.running = 0
        self.most = 0
        single_run = self.single.run

        def counted(backbone: str, batch: np.ndarray) -> np.ndarray:
            with self._lock:
                self.running += 1
                self.most = max(self.most, self.running)
            time.sleep(0.03)
            try:
                return single_run(backbone, batch)
            finally:
                with self._lock:
                    self.running -= 1

        self.single.run = counted  # type: ignore[method-assign]


def test_a_lone_call_runs_on_the_pooled_engine() -> None:
    inner = Streams()
    runner = BatchingRunner(inner, window_s=0.002, max_size=32)
    for seed in range(3):  # one after another: each finds the lane idle
        np.testing.assert_array_equal(runner.run("mobilenet_v2", batch_of(seed)),
                                      Recorder().run("x", batch_of(seed)))
    assert inner.calls == [("mobilenet_v2", 1)] * 3 and inner.single.calls == []


def test_a_lone_announced_call_runs_in_its_own_thread() -> None:
    inner = Streams()
    threads: list[str] = []
    pooled_run = inner.run

    def recording(backbone: str, batch: np.ndarray) -> np.ndarray:
        threads.append(threading.current_thread().name)
        return pooled_run(backbone, batch)

    inner.run = recording  # type: ignore[method-assign]
    runner = BatchingRunner(inner, window_s=0.05, max_size=32)
    with runner.preparing():
        runner.run("mobilenet_v2", batch_of(1))
    runner.run("mobilenet_v2", batch_of(2))  # unannounced: a lane thread, after the window...
    assert threads[0] == threading.current_thread().name  # ...announced: no hand-off
    assert threads[1].startswith("microbatch-mobilenet_v2")
    assert runner.calls == 2


def test_under_load_calls_run_single_threaded_one_per_stream() -> None:
    inner = Streams(streams=2)
    inner.gate = threading.Event()  # the first call holds the pooled engine...
    runner = BatchingRunner(inner, window_s=0.001, max_size=2)
    first = threading.Thread(target=runner.run, args=("mobilenet_v2", batch_of(0)))
    first.start()
    assert inner.entered.wait(10)
    batches = [batch_of(seed) for seed in range(1, 9)]  # ...while eight more arrive
    with ThreadPoolExecutor(8) as pool:
        results = list(pool.map(lambda b: runner.run("mobilenet_v2", b), batches))
        inner.gate.set()
    first.join(10)
    for batch, result in zip(batches, results, strict=True):
        np.testing.assert_array_equal(result, Recorder().run("x", batch))
    assert inner.calls == [("mobilenet_v2", 1)]  # only the lone first call was pooled
    assert sum(size for _, size in inner.single.calls) == 8
    assert all(size <= 2 for _, size in inner.single.calls)  # max_size still holds
    assert inner.most == 1  # the other stream was busy with the pooled call meanwhile


def test_a_burst_runs_on_every_stream_at_once_and_never_more() -> None:
    inner = Streams(streams=2)
    inner.delay = 0.03  # a pooled pass as long as a single-threaded one: the others queue
    runner = BatchingRunner(inner, window_s=0.001, max_size=1)
    batches = [batch_of(seed) for seed in range(8)]
    results = run_at_once(runner, batches)
    for batch, result in zip(batches, results, strict=True):
        np.testing.assert_array_equal(result, Recorder().run("x", batch))
    assert inner.most == 2  # both lanes' threads ran single-threaded passes side by side
    assert len(inner.calls) + len(inner.single.calls) == 8
