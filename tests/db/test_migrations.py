"""One migration history that builds the schema the code expects, up and down, on every DB."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import inspect, text

from app.db.base import Base
from app.db.engine import downgrade_database, make_engine, upgrade_database

POSTGRES_URL = os.environ.get("NANONET_TEST_POSTGRES_URL")


def _urls(tmp_path: Path) -> list[str]:
    urls = [f"sqlite:///{tmp_path / 'migrations.db'}"]
    if POSTGRES_URL:
        urls.append(POSTGRES_URL)
    return urls


@pytest.fixture(params=["sqlite", "postgresql"])
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'migrations.db'}"
        return
    if not POSTGRES_URL:
        if os.environ.get("CI"):
            pytest.fail("CI must set NANONET_TEST_POSTGRES_URL")
        pytest.skip("set NANONET_TEST_POSTGRES_URL to test migrations on PostgreSQL")
    _drop_everything(POSTGRES_URL)
    yield POSTGRES_URL
    _drop_everything(POSTGRES_URL)


def _drop_everything(url: str) -> None:
    engine = make_engine(url)
    with engine.begin() as connection:
        connection.execute(text("DROP SCHEMA public CASCADE"))
        connection.execute(text("CREATE SCHEMA public"))
    engine.dispose()


def _tables(url: str) -> set[str]:
    engine = make_engine(url)
    try:
        return set(inspect(engine).get_table_names()) - {"alembic_version"}
    finally:
        engine.dispose()


def test_upgrade_matches_the_models_and_downgrade_removes_everything(database_url: str) -> None:
    upgrade_database(database_url)
    assert _tables(database_url) == set(Base.metadata.tables)
    engine = make_engine(database_url)
    with engine.connect() as connection:
        diff = compare_metadata(MigrationContext.configure(connection), Base.metadata)
    engine.dispose()
    assert diff == []

    downgrade_database(database_url, "base")
    assert _tables(database_url) == set()
    upgrade_database(database_url)
    assert _tables(database_url) == set(Base.metadata.tables)
