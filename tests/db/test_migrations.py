"""One migration history that builds the schema the code expects, up and down, on every DB."""

from __future__ import annotations

import os
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path

import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import inspect, text

from app.db.base import Base
from app.db.engine import downgrade_database, make_engine, upgrade_database

POSTGRES_URL = os.environ.get("NANONET_TEST_POSTGRES_URL")
NOW = {"t": datetime(2026, 1, 1)}


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


def test_renaming_nanonet_to_model_keeps_every_row(database_url: str) -> None:
    upgrade_database(database_url, "0001")
    engine = make_engine(database_url)
    with engine.begin() as connection:
        run = connection.execute
        run(text("INSERT INTO account (id, name, created_at) VALUES ('a1', 'alice', :t)"), NOW)
        run(text("INSERT INTO nanonet (id, account_id, name, kind, state, created_at, updated_at)"
                 " VALUES ('m1', 'a1', 'trees', 'single_label', 'ready', :t, :t)"), NOW)
        run(text("INSERT INTO category (id, nanonet_id, name, position)"
                 " VALUES (1, 'm1', 'oak', 0)"))
        run(text("INSERT INTO image (id, nanonet_id, sha256, filename, source, format, width,"
                 " height, size_bytes, created_at) VALUES (1, 'm1', :h, 'a.jpg', 'upload', 'JPEG',"
                 " 4, 4, 10, :t)"), {**NOW, "h": "ab" * 32})
        run(text("INSERT INTO image_label (image_id, category_id) VALUES (1, 1)"))
        run(text("INSERT INTO model_version (id, nanonet_id, number, backbone, head, labels,"
                 " params, image_ids, artifact_path, train_seconds, created_at) VALUES"
                 " ('v1', 'm1', 1, 'b', 'logistic', '[]', '{}', '[1]', 'p', 1.0, :t)"), NOW)
        run(text("UPDATE nanonet SET active_version_id = 'v1'"))
        run(text("INSERT INTO job (id, account_id, nanonet_id, kind, status, stage, progress,"
                 " attempts, created_at, updated_at) VALUES ('j1', 'a1', 'm1', 'train',"
                 " 'succeeded', 'done', 1.0, 1, :t, :t)"), NOW)
    engine.dispose()

    upgrade_database(database_url)
    engine = make_engine(database_url)
    with engine.connect() as connection:
        assert connection.execute(text("SELECT active_version_id FROM model")).all() == [("v1",)]
        for table in ("category", "image", "job", "model_version"):
            assert connection.execute(text(f"SELECT model_id FROM {table}")).all() == [("m1",)]
        assert connection.execute(text("SELECT count(*) FROM image_label")).scalar() == 1
    with engine.begin() as connection:  # the keys still cascade: deleting the model empties all
        connection.execute(text("DELETE FROM model"))
        assert connection.execute(text("SELECT count(*) FROM image_label")).scalar() == 0
    engine.dispose()
    downgrade_database(database_url, "0001")
    assert "nanonet" in _tables(database_url)


def test_a_deleted_image_id_is_never_given_again(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'ids.db'}"
    upgrade_database(url)
    engine = make_engine(url)
    insert = text("INSERT INTO image (model_id, sha256, filename, source, format, width, height,"
                  " size_bytes, created_at) VALUES ('m1', :h, 'a.jpg', 'upload', 'JPEG', 1, 1, 1,"
                  " :t) RETURNING id")
    with engine.begin() as connection:
        connection.execute(text("INSERT INTO account (id, name, created_at) VALUES"
                                " ('a1', 'alice', :t)"), NOW)
        connection.execute(text("INSERT INTO model (id, account_id, name, kind, state,"
                                " created_at, updated_at) VALUES ('m1', 'a1', 'x',"
                                " 'single_label', 'ready', :t, :t)"), NOW)
        first = connection.execute(insert, {**NOW, "h": "a" * 64}).scalar_one()
        connection.execute(text("DELETE FROM image WHERE id = :id"), {"id": first})
        second = connection.execute(insert, {**NOW, "h": "b" * 64}).scalar_one()
    engine.dispose()
    assert second > first
