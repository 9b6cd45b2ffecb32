"""schemathesis against ``/openapi.json`` of a real server (127.0.0.1, port 0).

Every operation the document describes is called with generated requests -
valid ones, which must be accepted, and invalid ones, which must be refused
with a documented 4xx - and every answer is checked against the document: no
5xx, documented status codes and content types, bodies matching their
schemas. Bounded: a fixed number of examples per operation, no deadline per
example (a loaded machine is slow, not wrong), derandomized so that a run is
repeatable.

The schema is loaded when the module is (schemathesis' fixture-based loader
does not run under this pytest), from the platform built here; the test
checks that the running server serves exactly that document.
"""

from __future__ import annotations

import pytest

schemathesis = pytest.importorskip("schemathesis")
import httpx  # noqa: E402
from hypothesis import HealthCheck, Phase, settings  # noqa: E402

from nexus_lab import (  # noqa: E402
    Nexus,
    NexusSessionManager,
    deploy_as_api,
    deploy_multi_channel,
    deploy_with_sessions,
)
from nexus_lab.platform.openapi import build_openapi  # noqa: E402


def add(a: int, b: float = 1.5, label: str = "sum", flags: list[bool] | None = None) -> dict:
    """Add two numbers."""
    return {"sum": a + b, "label": label, "flags": flags or []}


def chat(query: str, session_state: dict | None = None) -> dict:
    """Answer with the number of turns so far."""
    return {"response": f"{query} ({(session_state or {}).get('turns', 0)})"}


APP = Nexus(api_port=0, mcp_port=0, enable_monitoring=True)
MANAGER = NexusSessionManager(cleanup_interval=300)
deploy_multi_channel(add, APP, "add")
deploy_with_sessions(chat, APP, "chat", MANAGER)
deploy_as_api(add, APP, "api_add")
DOCUMENT = build_openapi(APP)
schema = schemathesis.openapi.from_dict(DOCUMENT)
CASES: list[str] = []  # the operations called, one entry per generated case


@pytest.fixture(scope="module")
def base_url():
    APP.start(block=False)
    try:
        served = httpx.get(APP.api_url + "/openapi.json", timeout=30).json()
        assert served == DOCUMENT  # what is tested is what the server publishes
        yield APP.api_url
    finally:
        APP.close()
        MANAGER.close()


@schema.parametrize()
@settings(
    max_examples=100,
    deadline=None,
    derandomize=True,
    database=None,
    phases=[Phase.explicit, Phase.generate],  # no shrinking: a failure is reported as found
    suppress_health_check=list(HealthCheck),
)
def test_api_conforms_to_its_openapi_document(case, base_url):
    CASES.append(case.operation.label)
    case.call_and_validate(base_url=base_url)


def test_every_operation_was_exercised(base_url):
    """Runs after the generated tests (file order): every documented operation was called."""
    if not CASES:
        pytest.skip("run together with test_api_conforms_to_its_openapi_document")
    per_operation = {label: CASES.count(label) for label in set(CASES)}
    documented = {f"{m.upper()} {path}" for path, ops in DOCUMENT["paths"].items() for m in ops}
    assert set(per_operation) == documented
    # the operations with inputs get many cases (one without any has few distinct ones)
    assert sum(per_operation.values()) >= 500, per_operation
