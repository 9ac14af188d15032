"""One account cannot starve the others: the embedded runner takes accounts in turn, and a
claim holds back an account at its cap while another account's job waits."""

from __future__ import annotations

import threading
import time

import pytest

from app.jobs import handlers
from app.jobs.handlers import run_job
from app.jobs.inprocess import FairQueue, InProcessQueue
from app.runtime import Runtime
from app.services import jobs as job_service
from tests.jobs.conftest import add_account, add_job, job_row, queue_of


def test_the_fair_queue_serves_the_account_that_waited_longest_first() -> None:
    pending = FairQueue()
    pending.put("a1", "alice")
    assert pending.get() == "a1"  # alice's first job starts...
    for job_id, account in (("a2", "alice"), ("a3", "alice"), ("b1", "bob"), ("c1", "carol"),
                            ("b2", "bob")):
        pending.put(job_id, account)
    pending.put("a2", "alice")  # a resend of a job already waiting is not queued twice
    pending.close()
    taken = []
    while (job_id := pending.get()) is not None:
        taken.append(job_id)
        pending.task_done()
    assert taken == ["b1", "c1", "a2", "b2", "a3"]  # ...then everyone else's before her next


def test_the_embedded_runner_takes_accounts_in_turn() -> None:
    accounts = {"a1": "alice", "a2": "alice", "a3": "alice", "b1": "bob"}
    started: list[str] = []
    first_running = threading.Event()
    release = threading.Event()

    def run(job_id: str) -> None:
        started.append(job_id)
        if job_id == "a1":
            first_running.set()
            release.wait(10)

    runner = InProcessQueue(run, workers=1, account_of=accounts.get)
    runner.start()
    try:
        runner.submit("a1")
        assert first_running.wait(10)
        for job_id in ("a2", "a3", "b1"):  # alice queues two more before bob's arrives
            runner.submit(job_id)
        release.set()
        runner.join(10)
    finally:
        runner.stop()
    assert started == ["a1", "b1", "a2", "a3"]


def _claim(runtime: Runtime, job_id: str) -> job_service.Claim | job_service.Deferred | None:
    with runtime.session_factory() as session:
        return job_service.claim_job(session, job_id=job_id, lease_seconds=60, account_cap=1,
                                     training_timeout=60)


def test_an_account_at_its_cap_waits_while_another_account_has_a_job(
        runtime: Runtime) -> None:
    alice, bob = add_account(runtime), add_account(runtime, "bob")
    add_job(runtime, alice, status="running")
    hers, his = add_job(runtime, alice), add_job(runtime, bob)
    assert _claim(runtime, hers) == job_service.Deferred(kind="probe")
    assert job_row(runtime, hers).status == "queued"
    assert isinstance(_claim(runtime, his), job_service.Claim)
    # bob now runs as many as his cap too: nobody else waits under a cap, so she may go
    assert isinstance(_claim(runtime, hers), job_service.Claim)


def test_alone_an_account_may_use_every_worker(runtime: Runtime) -> None:
    alice = add_account(runtime)
    add_job(runtime, alice, status="running")
    assert isinstance(_claim(runtime, add_job(runtime, alice)), job_service.Claim)


def test_webhook_deliveries_neither_count_nor_wait(runtime: Runtime) -> None:
    alice, bob = add_account(runtime), add_account(runtime, "bob")
    add_job(runtime, alice, status="running")
    add_job(runtime, bob)
    delivery = add_job(runtime, alice, kind="webhook")
    assert isinstance(_claim(runtime, delivery), job_service.Claim)
    assert isinstance(_claim(runtime, add_job(runtime, bob)), job_service.Claim)


def test_two_workers_cannot_both_take_the_last_place_under_the_cap(runtime: Runtime) -> None:
    alice, bob = add_account(runtime), add_account(runtime, "bob")
    add_job(runtime, bob)  # waiting, so alice is held to her cap
    def claim(job_id: str, start: threading.Barrier, claims: list[object]) -> None:
        start.wait()
        claims.append(_claim(runtime, job_id))

    for _ in range(5):
        hers = [add_job(runtime, alice) for _ in range(2)]
        start = threading.Barrier(2)
        claims: list[object] = []
        threads = [threading.Thread(target=claim, args=(job_id, start, claims))
                   for job_id in hers]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(30)
        assert sorted(type(c).__name__ for c in claims) == ["Claim", "Deferred"]
        for job_id in hers:  # end her runs for the next round
            with runtime.session_factory() as session:
                job_service.fail_job(session, job_id=job_id, error="done")


def test_a_job_held_back_is_sent_again_after_a_short_delay(
        runtime: Runtime, monkeypatch: pytest.MonkeyPatch) -> None:
    ran: list[str] = []

    def handler(runtime: Runtime, job_id: str) -> None:
        ran.append(job_id)

    monkeypatch.setitem(handlers.HANDLERS, "probe", handler)
    alice, bob = add_account(runtime), add_account(runtime, "bob")
    add_job(runtime, alice, status="running")
    add_job(runtime, bob)
    hers = add_job(runtime, alice)
    before = time.time()
    run_job(runtime, hers)
    assert ran == []
    assert queue_of(runtime).sent == [(hers, "jobs", runtime.settings.job_account_retry_delay)]
    job = job_row(runtime, hers)
    assert job.status == "queued" and job.due_at is not None
    assert job.due_at.timestamp() >= before + runtime.settings.job_account_retry_delay - 0.01
