"""Engine and session factory for the configured database, and Alembic upgrades."""

from __future__ import annotations

from pathlib import Path

from sqlalchemy import Engine, create_engine, event
from sqlalchemy.orm import Session, sessionmaker

MIGRATIONS_DIR = Path(__file__).resolve().parents[2] / "migrations"
SQLITE_POOL_SIZE = 20


def make_engine(url: str) -> Engine:
    """Return an engine; SQLite gets WAL, foreign keys and a busy timeout for the job threads."""
    if url.startswith("sqlite"):
        # Pooled connections stay open: past pool_size, each checkout beyond it opened a fresh
        # connection and ran the pragmas below, then closed it. With 16 concurrent predicts
        # (two sessions each, the key check and the route) the default 5 did that on most
        # requests. An idle SQLite connection costs a file handle and a little memory.
        engine = create_engine(url, connect_args={"check_same_thread": False, "timeout": 30},
                               pool_size=SQLITE_POOL_SIZE, max_overflow=2 * SQLITE_POOL_SIZE)

        @event.listens_for(engine, "connect")
        def _sqlite_pragmas(dbapi_connection, _record) -> None:  # type: ignore[no-untyped-def]
            cursor = dbapi_connection.cursor()
            cursor.execute("PRAGMA foreign_keys=ON")
            cursor.execute("PRAGMA journal_mode=WAL")
            cursor.execute("PRAGMA synchronous=NORMAL")
            cursor.close()

        return engine
    return create_engine(url, pool_pre_ping=True)


def make_session_factory(engine: Engine) -> sessionmaker[Session]:
    return sessionmaker(engine, expire_on_commit=False)


def alembic_config(url: str):  # type: ignore[no-untyped-def]
    from alembic.config import Config

    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS_DIR))
    config.set_main_option("sqlalchemy.url", url.replace("%", "%%"))
    return config


def upgrade_database(url: str, revision: str = "head") -> None:
    """Apply Alembic migrations up to `revision`."""
    from alembic import command

    command.upgrade(alembic_config(url), revision)


def downgrade_database(url: str, revision: str) -> None:
    from alembic import command

    command.downgrade(alembic_config(url), revision)
