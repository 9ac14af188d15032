"""The `nanonet` command: serve, keys create, migrate."""

from __future__ import annotations

import argparse
import logging
import sys


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="nanonet", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)

    serve = commands.add_parser("serve", help="run the API, web form and (embedded) job runner")
    serve.add_argument("--host", default="127.0.0.1")
    serve.add_argument("--port", type=int, default=8000)
    serve.add_argument("--log-level", default="info")

    keys = commands.add_parser("keys", help="manage accounts and API keys")
    keys_commands = keys.add_subparsers(dest="keys_command", required=True)
    create = keys_commands.add_parser("create", help="create an account and print its new key")
    create.add_argument("name")

    commands.add_parser("migrate", help="apply database migrations")

    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s %(message)s")
    logging.getLogger("alembic.runtime.plugins").setLevel(logging.WARNING)
    if args.command == "serve":
        return _serve(args)
    if args.command == "keys":
        return _create_key(args.name)
    return _migrate()


def _serve(args: argparse.Namespace) -> int:
    import uvicorn

    from app.main import create_app

    uvicorn.run(create_app(), host=args.host, port=args.port, log_level=args.log_level)
    return 0


def _create_key(name: str) -> int:
    from app.config import Settings
    from app.db.engine import upgrade_database
    from app.runtime import build_runtime
    from app.services.accounts import create_account

    settings = Settings()
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    upgrade_database(settings.resolved_database_url)
    runtime = build_runtime(settings)
    try:
        with runtime.session_factory() as session:
            account, key = create_account(session, name=name)
    finally:
        runtime.engine.dispose()
    print(f"Created account {account.name!r} ({account.id}). API key: {key}")
    return 0


def _migrate() -> int:
    from app.config import Settings
    from app.db.engine import upgrade_database

    settings = Settings()
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    upgrade_database(settings.resolved_database_url)
    print(f"Database at revision head: {settings.resolved_database_url.split('@')[-1]}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
