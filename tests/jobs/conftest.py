"""Job system fixtures: a migrated database (SQLite, and PostgreSQL when
NANONET_TEST_POSTGRES_URL is set), a runtime on it with short leases, and job rows."""

from __future__ import annotations

import os
import threading
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import make_url, text, update

from app.db.base import utcnow
from app.db.engine import make_engine, upgrade_database
from app.db.tables import Account, Job, Model
from app.runtime import Runtime, build_runtime
from tests.conftest import make_settings

POSTGRES_URL = os.environ.get("NANONET_TEST_POSTGRES_URL")
# Short enough for tests to watch leases run out, long enough for a loaded 2-core machine.
FAST_JOBS: dict[str, object] = {
    "job_heartbeat_interval": 0.2, "job_lease_seconds": 1.0, "job_reconcile_interval": 0.3,
    "job_resend_after": 60.0, "job_account_retry_delay": 0.5,
}


def _need_postgres() -> str:
    if not POSTGRES_URL:
        if os.environ.get("CI"):
            pytest.fail("CI must set NANONET_TEST_POSTGRES_URL")
        pytest.skip("set NANONET_TEST_POSTGRES_URL to test the job system on PostgreSQL")
    return POSTGRES_URL


@pytest.fixture(scope="session")
def postgres_database() -> Iterator[Callable[[], str]]:
    """Makes fresh PostgreSQL databases of our own (never the shared one other suites drop)
    and drops them at the end."""
    made: list[str] = []

    def fresh() -> str:
        base = make_url(_need_postgres())
        name = f"nanonet_jobs_{uuid.uuid4().hex[:10]}"
        admin = make_engine(base.render_as_string(hide_password=False))
        with admin.connect().execution_options(isolation_level="AUTOCOMMIT") as connection:
            connection.execute(text(f'CREATE DATABASE "{name}"'))
        admin.dispose()
        made.append(name)
        return base.set(database=name).render_as_string(hide_password=False)

    yield fresh
    if made:
        admin = make_engine(make_url(_need_postgres()).render_as_string(hide_password=False))
        with admin.connect().execution_options(isolation_level="AUTOCOMMIT") as connection:
            for name in made:
                connection.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


@pytest.fixture(params=["sqlite", "postgresql"])
def database_url(request: pytest.FixtureRequest, tmp_path: Path,
                 postgres_database: Callable[[], str]) -> str:
    url = f"sqlite:///{tmp_path / 'jobs.db'}" if request.param == "sqlite" else (
        postgres_database())
    upgrade_database(url)
    return url


@dataclass
class RecordingQueue:
    """Where the runtime sends jobs in these tests: it records, and runs nothing."""

    sent: list[tuple[str, str, float]] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def submit(self, job_id: str, *, lane: str = "jobs", kind: str | None = None,
               delay: float = 0.0) -> None:
        with self.lock:
            self.sent.append((job_id, lane, delay))

    def start(self) -> None: ...

    def stop(self) -> None: ...

    def ids(self) -> list[str]:
        return [job_id for job_id, _, _ in self.sent]


@pytest.fixture
def runtime(database_url: str, tmp_path: Path) -> Iterator[Runtime]:
    built = build_runtime(make_settings(tmp_path / "data", database_url=database_url,
                                        **FAST_JOBS))
    built.queue = RecordingQueue()
    try:
        yield built
    finally:
        built.engine.dispose()


def queue_of(runtime: Runtime) -> RecordingQueue:
    assert isinstance(runtime.queue, RecordingQueue)
    return runtime.queue


def add_account(runtime: Runtime, name: str = "alice") -> str:
    with runtime.session_factory() as session:
        account = Account(name=name)
        session.add(account)
        session.commit()
        return account.id


def add_model(runtime: Runtime, account_id: str, *, state: str = "training") -> str:
    with runtime.session_factory() as session:
        model = Model(account_id=account_id, name="trees", state=state)
        session.add(model)
        session.commit()
        return model.id


def add_job(runtime: Runtime, account_id: str, *, kind: str = "probe",
            model_id: str | None = None, **values: Any) -> str:
    """A job row as a route commits it, then changed to `values` (status, lease_until...)."""
    with runtime.session_factory() as session:
        job = Job(account_id=account_id, kind=kind, model_id=model_id)
        session.add(job)
        session.commit()
        if values:
            session.execute(update(Job).where(Job.id == job.id).values(**values))
            session.commit()
        return job.id


def job_row(runtime: Runtime, job_id: str) -> Job:
    with runtime.session_factory() as session:
        job = session.get(Job, job_id)
        assert job is not None
        return job


def ago(seconds: float) -> Any:
    return utcnow() - timedelta(seconds=seconds)
