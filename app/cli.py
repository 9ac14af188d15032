"""The `nanonet` command: serve, worker, keys create|list|revoke|rotate, migrate, import,
export-images, retrain."""

from __future__ import annotations

import argparse
import importlib
import logging
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from app.client import DEFAULT_URL, ApiError, Client, Report, export_images, import_folder

if TYPE_CHECKING:
    from app.config import Settings
    from app.runtime import Runtime
    from app.services.accounts import KeyListing
    from app.services.retrain import Retraining


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.command in ("import", "export-images"):
        return _transfer(args)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s %(message)s")
    logging.getLogger("alembic.runtime.plugins").setLevel(logging.WARNING)
    if args.command == "serve":
        return _serve(args)
    if args.command == "worker":
        return _worker(args)
    if args.command == "keys":
        return _keys(args)
    if args.command == "retrain":
        return _retrain(args.account, args.activate)
    return _migrate()


def build_parser() -> argparse.ArgumentParser:
    """The `nanonet` command line and its subcommands."""
    parser = argparse.ArgumentParser(prog="nanonet", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)

    serve = commands.add_parser("serve", help="run the API, web form and (embedded) job runner")
    serve.add_argument("--host", default="127.0.0.1")
    serve.add_argument("--port", type=int, default=8000)
    serve.add_argument("--log-level", default="info")

    worker = commands.add_parser(
        "worker", help="run a Celery worker of the full stack on some queues",
        description="Start `celery -A worker.celery_app worker` on the given queues (the "
                    "full stack; NANONET_JOB_ROUTES says which job kinds go to which queue). "
                    "Options after `--` go to celery as they are.")
    _worker_arguments(worker)

    keys = commands.add_parser("keys", help="manage accounts and API keys")
    keys_commands = keys.add_subparsers(dest="keys_command", required=True)
    create = keys_commands.add_parser("create", help="create an account and print its new key")
    create.add_argument("name")
    listing = keys_commands.add_parser("list", help="every key: account, prefix, state")
    listing.add_argument("--account", metavar="NAME", help="only this account's keys")
    revoke = keys_commands.add_parser(
        "revoke", help="revoke a key at once, ending its web sessions")
    revoke.add_argument("key_id", metavar="KEY_ID", help="the key's id, from `keys list`")
    rotate = keys_commands.add_parser(
        "rotate", help="give the key's account a new key and revoke the old one")
    rotate.add_argument("key_id", metavar="KEY_ID", help="the key's id, from `keys list`")

    commands.add_parser("migrate", help="apply database migrations")

    upload = commands.add_parser(
        "import", help="upload a folder with one subfolder per category to a model over REST",
        description="Upload DIR/<category>/* to a model (DIR/_unlabelled/* to its unlabelled "
                    "pool), creating missing categories. Images the model already holds are "
                    "skipped by content, so a rerun resumes an interrupted import.")
    _client_arguments(upload)
    upload.add_argument("--batch-size", type=int, default=16, help="files per request")
    upload.add_argument("--limit", type=int, default=None, help=argparse.SUPPRESS)
    export = commands.add_parser(
        "export-images", help="download a model's images into one subfolder per category",
        description="Write every image of a model, as uploaded, to DIR/<category>/ "
                    "(DIR/_unlabelled/ for the pool); the inverse of `nanonet import`.")
    _client_arguments(export)

    retrain = commands.add_parser(
        "retrain", help="train every model again (after new backbones or settings)",
        description="Queue a training of every model on this server's database (or one "
                    "account's), wait for them, and print each model's cross-validated "
                    "accuracy before and after, and whether the new version went live.")
    retrain.add_argument("--all", action="store_true", required=True,
                         help="every model (of --account, if given)")
    retrain.add_argument("--account", metavar="NAME", help="only this account's models")
    retrain.add_argument("--activate", choices=("always", "if_better", "never"),
                         default="if_better",
                         help="whether a new version goes live (default: if_better)")

    return parser


def _queues(value: str) -> list[str]:
    queues = [queue.strip() for queue in value.split(",")]
    if not all(queues):
        raise argparse.ArgumentTypeError(f"{value!r}: give queue names separated by commas, "
                                         "such as cpu,gpu")
    return queues


def _worker_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--queues", type=_queues, default=None, metavar="Q1,Q2",
                        help="the queues to consume, comma-separated (default: "
                             "$NANONET_JOB_QUEUE, cpu)")
    parser.add_argument("--concurrency", type=int, default=1, metavar="N",
                        help="jobs run at once (pool processes or threads; default 1: a "
                             "training takes every core or the GPU)")
    parser.add_argument("--pool", choices=("prefork", "threads", "solo"), default="prefork",
                        help="prefork for jobs (default), threads for webhook deliveries")
    parser.add_argument("--loglevel", default="INFO")
    parser.add_argument("celery_args", nargs=argparse.REMAINDER, help=argparse.SUPPRESS)


def worker_argv(args: argparse.Namespace, *, default_queue: str = "cpu") -> list[str]:
    """The `celery worker` command line that `nanonet worker` runs for `args`."""
    extra = list(args.celery_args)
    if extra[:1] == ["--"]:
        extra = extra[1:]
    queues = args.queues or [default_queue]
    return [sys.executable, "-m", "celery", "-A", "worker.celery_app", "worker",
            "-Q", ",".join(queues), "--concurrency", str(args.concurrency),
            "--pool", args.pool, "--loglevel", args.loglevel, *extra]


def _worker(args: argparse.Namespace) -> int:
    """Check the settings (the routes included), then become the Celery worker."""
    from app.jobs.celery_queue import check_routes

    settings = _settings()
    if settings is None:
        return 2
    if args.concurrency < 1:
        print("nanonet worker: --concurrency must be at least 1.", file=sys.stderr)
        return 2
    try:
        check_routes(settings)
    except ValueError as exc:
        print(f"nanonet worker: {exc}", file=sys.stderr)
        return 2
    argv = worker_argv(args, default_queue=settings.job_queue)
    sys.stdout.flush()
    sys.stderr.flush()
    os.execv(argv[0], argv)  # the worker gets the PID: signals from docker reach celery


def _client_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", required=True, metavar="ID", help="the model's id")
    parser.add_argument("dir", type=Path, metavar="DIR")
    parser.add_argument("--url", default=os.environ.get("NANONET_URL", DEFAULT_URL),
                        help="the server (default: $NANONET_URL or %(default)s)")
    parser.add_argument("--key", default=os.environ.get("NANONET_API_KEY"),
                        help="API key (default: $NANONET_API_KEY, which keeps it out of `ps`)")


def _transfer(args: argparse.Namespace) -> int:
    """Exit 0 when every file went, 1 when some failed (listed), 2 when nothing could run."""
    if not args.key:
        print("nanonet: no API key: set NANONET_API_KEY or pass --key.", file=sys.stderr)
        return 2
    if args.command == "import" and args.batch_size < 1:
        print("nanonet: --batch-size must be at least 1.", file=sys.stderr)
        return 2
    verb = "imported" if args.command == "import" else "exported"
    progress = _ProgressBar(verb)
    try:
        with Client(args.url, args.key) as client:
            if args.command == "import":
                report = import_folder(client, args.model, args.dir,
                                       batch_size=args.batch_size, limit=args.limit,
                                       on_plan=progress)
            else:
                report = export_images(client, args.model, args.dir,
                                       on_plan=progress)
    except ApiError as exc:
        print(f"nanonet: {exc.message}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("\nnanonet: interrupted; run the same command again to resume.", file=sys.stderr)
        return 130
    finally:
        progress.close()
    _print_report(report, verb)
    return 1 if report.failures else 0


class _ProgressBar:
    """tqdm's bar when it is installed, else a counter on stderr; started once the total is
    known (called with it, returns the callback that counts files), closed at the end."""

    def __init__(self, verb: str) -> None:
        self.verb = verb
        self.close: Callable[[], None] = lambda: None

    def __call__(self, total: int, skipped: int) -> Callable[[int], None]:
        if skipped:
            print(f"{skipped} already there, skipped", file=sys.stderr)
        try:
            tqdm = importlib.import_module("tqdm").tqdm
        except ImportError:
            return self._counter(total)
        bar = tqdm(total=total, unit="file", desc=self.verb, file=sys.stderr)
        self.close = bar.close
        return lambda n: bar.update(n)

    def _counter(self, total: int) -> Callable[[int], None]:
        done = 0

        def count(n: int) -> None:
            nonlocal done
            done += n
            print(f"\r{self.verb} {done}/{total}", end="", file=sys.stderr, flush=True)

        self.close = lambda: print(file=sys.stderr) if done else None
        return count


def _print_report(report: Report, verb: str) -> None:
    for name in report.created_categories:
        print(f"created category {name!r}")
    print(f"{verb} {report.done} files, skipped {report.skipped} already there, "
          f"{len(report.failures)} failed")
    if report.failures:
        print("failed:", file=sys.stderr)
        for path, reason in report.failures:
            print(f"  {path}: {reason}", file=sys.stderr)


def _settings() -> Settings | None:
    """The settings, or None after saying on stderr which one is wrong (a short key, say)."""
    from pydantic import ValidationError

    from app.config import Settings

    try:
        return Settings()
    except ValidationError as exc:
        for error in exc.errors():
            print(f"nanonet: {error['msg'].removeprefix('Value error, ')}", file=sys.stderr)
        return None


def _serve(args: argparse.Namespace) -> int:
    import uvicorn

    from app.main import create_app

    settings = _settings()
    if settings is None:
        return 2
    # Without NANONET_FORWARDED_ALLOW_IPS no proxy is believed (uvicorn would trust 127.0.0.1).
    uvicorn.run(create_app(settings), host=args.host, port=args.port, log_level=args.log_level,
                proxy_headers=settings.forwarded_allow_ips is not None,
                forwarded_allow_ips=settings.forwarded_allow_ips)
    return 0


def _keys(args: argparse.Namespace) -> int:
    """Exit 0 when done, 2 when the settings or the key id are wrong."""
    from app.db.engine import upgrade_database
    from app.errors import NanoNetError
    from app.runtime import build_runtime

    settings = _settings()
    if settings is None:
        return 2
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    upgrade_database(settings.resolved_database_url)
    runtime = build_runtime(settings)
    try:
        return _key_command(runtime, args)
    except NanoNetError as exc:
        print(f"nanonet keys: {exc.message}", file=sys.stderr)
        return 2
    finally:
        runtime.engine.dispose()


def _key_command(runtime: Runtime, args: argparse.Namespace) -> int:
    from app.services import accounts

    with runtime.session_factory() as session:
        if args.keys_command == "create":
            account, key = accounts.create_account(session, name=args.name)
            print(f"Created account {account.name!r} ({account.id}). API key: {key}")
        elif args.keys_command == "list":
            _print_keys(accounts.list_keys(session, account_name=args.account))
        elif args.keys_command == "revoke":
            api_key, account, ended = accounts.revoke_key(session, key_id=args.key_id)
            print(f"Revoked key {api_key.id} ({api_key.prefix}...) of account "
                  f"{account.name!r}; {ended} web sessions ended.")
        else:
            new, account, key = accounts.rotate_key(session, key_id=args.key_id)
            print(f"Revoked key {args.key_id} of account {account.name!r}; its new key "
                  f"{new.id}: {key}")
    return 0


def _print_keys(listing: list[KeyListing]) -> None:
    from app.db.tables import KeyHash

    header = ("key id", "account", "name", "prefix", "created", "state", "sessions")
    rows = [header]
    for item in listing:
        key = item.key
        state = (f"revoked {key.revoked_at:%Y-%m-%d %H:%M}" if key.revoked_at
                 else "active" if key.hash_scheme == KeyHash.HMAC_SHA256
                 else "active (sha256 until next use)")
        account = item.account.name + (" (bootstrap)" if item.account.is_bootstrap else "")
        rows.append((key.id, account, key.name, key.prefix + "...",
                     f"{key.created_at:%Y-%m-%d %H:%M}", state, str(item.live_sessions)))
    widths = [max(len(row[i]) for row in rows) for i in range(len(header))]
    for row in rows:
        print("  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True))
              .rstrip())


def _retrain(account_name: str | None, activate: str) -> int:
    from app.config import Settings
    from app.db.engine import upgrade_database
    from app.errors import NanoNetError
    from app.main import make_queue
    from app.runtime import build_runtime
    from app.services.retrain import queue_retraining, wait_for_retraining

    settings = Settings()
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    upgrade_database(settings.resolved_database_url)
    runtime = build_runtime(settings)
    # Embedded default: the jobs run here, on this process's runner, and only the ones it
    # queued (a job is claimed once, so a server on the same data dir never runs them twice).
    # Full stack: the Celery workers run them.
    runtime.queue = make_queue(runtime, resume=False)
    try:
        with runtime.session_factory() as session:
            plan = queue_retraining(session, runtime, account_name=account_name,
                                    activate=activate)
        runtime.queue.start()
        queued = sum(item.job_id is not None for item in plan)
        bar = _ProgressBar("retraining")
        wait_for_retraining(runtime, plan, on_done=bar(queued, 0) if queued else None)
        bar.close()
    except NanoNetError as exc:
        print(f"nanonet retrain: {exc.message}", file=sys.stderr)
        return 2
    finally:
        runtime.close()
    _print_retraining(plan)
    return 1 if any(item.status == "failed" for item in plan) else 0


def _print_retraining(plan: list[Retraining]) -> None:
    def accuracy(value: float | None) -> str:
        return "-" if value is None else f"{value:.3f}"

    def version(value: int | None) -> str:
        return "-" if value is None else f"v{value}"

    header = ("model", "account", "before", "cv acc", "after", "cv acc", "live", "why")
    rows = [header]
    for item in plan:
        live = ("skipped" if item.skipped else "failed" if item.status == "failed"
                else "yes" if item.activated else "no")
        rows.append((f"{item.model_name} ({item.model_id[:8]})", item.account_name,
                     version(item.before_version), accuracy(item.before_accuracy),
                     version(item.after_version), accuracy(item.after_accuracy), live,
                     item.skipped or item.reason or ""))
    widths = [max(len(row[i]) for row in rows) for i in range(len(header) - 1)]
    for row in rows:
        print("  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=False))
              + "  " + row[-1])
    went_live = sum(bool(item.activated) for item in plan)
    print(f"{len(plan)} models: {went_live} new versions went live, "
          f"{sum(item.activated is False for item in plan)} kept aside, "
          f"{sum(item.skipped is not None for item in plan)} skipped, "
          f"{sum(item.status == 'failed' for item in plan)} failed")


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
