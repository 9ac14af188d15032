"""Schemathesis against a real `nanonet serve`: every operation of `/openapi.json`, fuzzed with a
real key, then stateful runs along the links schemathesis infers (create a model, then read,
change and delete it by the id the response gave). No 5xx, every response as documented.

Half the generated requests that name a model are pointed at one trained model, so the reads of
a ready model (versions, metrics, review, images, predict with garbage files) are fuzzed too,
not only their 404s.
"""

from __future__ import annotations

import itertools
import time
from collections.abc import Iterator
from typing import Any

import httpx2 as httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis.errors import Unsatisfiable
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
)

from bench.server import Server, embedded_server
from tests.conftest import tree_photos

pytestmark = pytest.mark.slow

MIN_REQUESTS = 2000  # the bar for one CI run
EXAMPLES_PER_OPERATION = 35  # per mode; 40 operations, some with fewer distinct inputs
MODES = (GenerationMode.POSITIVE, GenerationMode.NEGATIVE)
STATEFUL_EXAMPLES = 40
STATEFUL_STEPS = 8
CHECKS = [not_a_server_error, response_schema_conformance, content_type_conformance]
SERVER_ENV = {
    "NANONET_BACKBONES": "mobilenet_v2",
    "NANONET_AUGMENT_VIEWS": "0",
    "NANONET_PREDICTIONS_PER_MINUTE": "1000000",  # the fuzzer is one client, not an abuser
    "NANONET_UPLOADS_PER_MINUTE": "1000000",
    "NANONET_MIN_FREE_DISK_BYTES": "0",
}
FUZZ_SETTINGS = settings(
    max_examples=EXAMPLES_PER_OPERATION, deadline=None, database=None, derandomize=True,
    phases=[Phase.explicit, Phase.generate],
    suppress_health_check=list(HealthCheck))


class Target:
    """The server, its key, a trained model's id, and the count of requests sent to it."""

    def __init__(self, server: Server, model_id: str) -> None:
        self.server = server
        self.model_id = model_id
        self.requests = 0
        self._alternate = itertools.cycle((True, False))

    @property
    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.server.key}"}

    def aim(self, case: Any) -> None:
        # Never delete the shared model itself: every later case would only see its 404.
        deletes_model = case.method.upper() == "DELETE" and case.path.endswith("{model_id}")
        if ("model_id" in (case.path_parameters or {}) and not deletes_model
                and next(self._alternate)):
            case.path_parameters["model_id"] = self.model_id

    def send(self, case: Any) -> None:
        self.requests += 1
        case.call_and_validate(headers=self.headers, checks=CHECKS)


def _trained_model(server: Server) -> str:
    with httpx.Client(base_url=server.url, timeout=300,
                      headers={"Authorization": f"Bearer {server.key}"}) as http:
        created = http.post("/api/v1/models", json={
            "name": "trees", "categories": ["hemlock", "japanese_cherry"]})
        assert created.status_code == 201, created.text
        model_id = created.json()["id"]
        for label in ("hemlock", "japanese_cherry"):
            files = [("files", (p.name, p.read_bytes(), "image/jpeg"))
                     for p in tree_photos(label)]
            uploaded = http.post(f"/api/v1/models/{model_id}/images",
                                 data={"category": label}, files=files)
            assert uploaded.status_code == 200, uploaded.text
        job_id = http.post(f"/api/v1/models/{model_id}/train").json()["job_id"]
        for _ in range(600):
            job = http.get(f"/api/v1/jobs/{job_id}").json()
            if job["status"] in ("succeeded", "failed"):
                break
            time.sleep(0.5)
        assert job["status"] == "succeeded", job
        return model_id


@pytest.fixture(scope="module")
def target() -> Iterator[Target]:
    with embedded_server(SERVER_ENV) as server:
        yield Target(server, _trained_model(server))


@pytest.fixture(scope="module")
def api_schema(target: Target) -> Any:
    return schemathesis.openapi.from_url(f"{target.server.url}/openapi.json")


def test_every_operation_answers_as_documented(api_schema: Any, target: Target) -> None:
    failures: list[str] = []
    operations = [result.ok() for result in api_schema.get_all_operations()]
    for operation, mode in itertools.product(operations, MODES):
        @FUZZ_SETTINGS
        @given(case=operation.as_strategy(generation_mode=mode))
        def fuzz(case: Any) -> None:
            target.aim(case)
            target.send(case)

        try:
            fuzz()
        except Unsatisfiable:  # no invalid input exists (a string path parameter only)
            continue
        except (Exception, BaseExceptionGroup) as exc:  # all operations run, then all failures
            failures.append(f"{operation.label} ({mode.value}): {exc}")
    assert len(operations) >= 40
    assert not failures, "\n\n".join(
        [*failures, f"server log tail:\n{target.server.log_path.read_text()[-6000:]}"])


def test_stateful_sequences_answer_as_documented(api_schema: Any, target: Target) -> None:
    # Failures are collected, not raised: a sequence depends on the server's state, so
    # hypothesis could not replay (shrink) it faithfully and would report only that.
    failures: dict[str, str] = {}

    class Sequences(api_schema.as_state_machine()):  # type: ignore[misc]
        def get_call_kwargs(self, case: Any) -> dict[str, Any]:
            return {"headers": target.headers}

        def call(self, case: Any, **kwargs: Any) -> Any:
            target.requests += 1
            return case.call(**kwargs)

        def validate_response(self, response: Any, case: Any, additional_checks: Any = None,
                              **kwargs: Any) -> None:
            try:
                case.validate_response(response, checks=CHECKS, transport_kwargs=kwargs)
            except (Exception, BaseExceptionGroup) as exc:
                failures.setdefault(f"{case.operation.label}: {str(exc)[:200]}", str(exc))

    Sequences.run(settings=settings(
        max_examples=STATEFUL_EXAMPLES, stateful_step_count=STATEFUL_STEPS, deadline=None,
        database=None, derandomize=True, suppress_health_check=list(HealthCheck)))
    assert not failures, "\n\n".join(
        [*failures.values(), f"server log tail:\n{target.server.log_path.read_text()[-6000:]}"])


def test_the_run_sent_enough_requests(target: Target, request: pytest.FixtureRequest) -> None:
    # Runs last in this module: the fuzzing above counted what it sent.
    request.node.user_properties.append(("requests", target.requests))  # for --junitxml
    assert target.requests >= MIN_REQUESTS, target.requests
