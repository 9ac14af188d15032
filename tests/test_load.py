"""The load test of bench/load.py, shorter: 4 clients for 20 s, then the whole loss audit."""

import pytest

from bench.load import SERVER_ENV, run_load
from bench.server import embedded_server

pytestmark = pytest.mark.slow

CLIENTS = 4
DURATION_S = 20
GRACE_S = 240


def test_load_loses_and_duplicates_nothing_and_answers_no_5xx() -> None:
    with embedded_server(SERVER_ENV) as server:
        result = run_load(server, clients=CLIENTS, duration=DURATION_S, grace=GRACE_S)
    assert result.ok, "\n".join(result.problems)
    assert result.accepted > 0 and result.jobs["succeeded"] > 0, result
    assert result.server_errors == 0
