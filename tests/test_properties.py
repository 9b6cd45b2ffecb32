"""Property tests (hypothesis): the session merge, TTL arithmetic, percentile maths.

* ``session_update`` (what a call writes into its session, platform/deployment.py)
  and the manager's merges (``update_session_state``, ``apply_session_update``)
  on the memory and SQLite stores: a merge is ``{**old, **updates}`` at the top
  level, nothing else changes, turns count, the history keeps the last turns.
* Sliding expiry with an injected clock: a session lives exactly ``ttl``
  seconds after its last use, ``touch=False`` reads never move that, and a
  per-session ``ttl`` beats the manager's.
* :func:`nexus_lab.metrics.percentile` against ``numpy.percentile`` (the same
  linear interpolation), and the summaries built on it.

Bounded for ``make test``: a fixed number of examples, no deadline (a loaded
machine is slow, not wrong), no example database written.
"""

from __future__ import annotations

import copy
import math
from typing import Any

import pytest

hypothesis = pytest.importorskip("hypothesis")
from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from nexus_lab import NexusSessionManager  # noqa: E402
from nexus_lab.errors import SessionStateError  # noqa: E402
from nexus_lab.metrics import PerformanceMetrics, percentile  # noqa: E402
from nexus_lab.platform.deployment import HISTORY_TURNS, session_update  # noqa: E402

np = pytest.importorskip("numpy")

SETTINGS = settings(
    max_examples=150,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)

#: The manager's properties open a store per example (a SQLite file on disk): fewer of them.
STORE_SETTINGS = settings(SETTINGS, max_examples=60)

# ----------------------------------------------------------------------------- strategies
#: Text any store holds: no lone surrogates (those are refused, see test_hostile).
text = st.text(st.characters(blacklist_categories=("Cs",)), max_size=20)
keys = st.text(st.characters(blacklist_categories=("Cs",)), min_size=1, max_size=8)
scalars = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**53), max_value=2**53)
    | st.floats(allow_nan=False, allow_infinity=False)
    | text
)
json_values = st.recursive(
    scalars,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(keys, inner, max_size=4),
    max_leaves=12,
)
json_objects = st.dictionaries(keys, json_values, max_size=6)
channels = st.sampled_from(["api", "cli", "mcp"])


def _short_enough(value: Any) -> bool:
    return not isinstance(value, str) or len(value) <= 500


# ----------------------------------------------------------------------------- session_update
@SETTINGS
@given(
    values=json_objects,
    outputs=json_objects,
    state=json_objects,
    channel=channels,
    long_text=st.integers(min_value=501, max_value=700).map(lambda n: "é" * n) | st.none(),
)
def test_session_update_writes_the_documented_shape(values, outputs, state, channel, long_text):
    if long_text is not None:
        values = {**values, "query": long_text}
    before = copy.deepcopy((values, outputs, state))
    update = session_update(values, outputs, state, channel)
    assert (values, outputs, state) == before  # a pure function of its arguments
    assert set(update) == {"last_query", "last_response", "last_channel", "turns", "history"}
    assert update["last_query"] == (values["query"] if "query" in values else values)
    assert update["last_response"] == (outputs["response"] if "response" in outputs else outputs)
    assert update["last_channel"] == channel
    old_turns = state.get("turns")
    assert update["turns"] == (old_turns if isinstance(old_turns, int) else 0) + 1
    history = update["history"]
    assert 1 <= len(history) <= HISTORY_TURNS
    last = history[-1]
    assert last["channel"] == channel
    assert _short_enough(last["query"]) and _short_enough(last["response"])
    if isinstance(update["last_query"], str):
        assert update["last_query"].startswith(last["query"].rstrip("…"))
    old = state.get("history")
    if isinstance(old, list):  # the earlier turns, in order, as a suffix
        kept = history[:-1]
        assert kept == old[len(old) - len(kept):] if kept else True
        assert len(kept) == min(len(old), HISTORY_TURNS - 1)


@SETTINGS
@given(turns=st.lists(st.tuples(text, text, channels), min_size=1, max_size=20))
def test_session_update_folded_over_calls_counts_and_keeps_the_last_turns(turns):
    state: dict[str, Any] = {}
    for query, response, channel in turns:
        state = {**state, **session_update({"query": query}, {"response": response}, state, channel)}
    assert state["turns"] == len(turns)
    expected = [{"channel": c, "query": q, "response": r} for q, r, c in turns][-HISTORY_TURNS:]
    assert state["history"] == expected
    assert state["last_query"] == turns[-1][0] and state["last_channel"] == turns[-1][2]


# ----------------------------------------------------------------------------- the manager's merges
@pytest.fixture(params=["memory", "sqlite"])
def store_url(request, tmp_path):
    return None if request.param == "memory" else f"sqlite:///{tmp_path / 'props.db'}"


@STORE_SETTINGS
@given(initial=json_objects, merges=st.lists(st.tuples(json_objects, channels), max_size=6))
def test_update_session_state_is_a_top_level_merge(store_url, initial, merges):
    with NexusSessionManager(cleanup_interval=300, store=store_url, max_state_bytes=1 << 20) as manager:
        sid = manager.create_session("u").session_id
        expected = manager.update_session_state(sid, initial, channel="api")
        assert expected == initial
        writers = dict.fromkeys(initial, "api")
        for updates, channel in merges:
            result = manager.update_session_state(sid, updates, channel=channel)
            expected = {**expected, **updates}
            writers.update(dict.fromkeys(updates, channel))
            assert result == expected
            result["mutated by the caller"] = True  # the returned dict is the caller's own
        assert manager.get_session_state(sid) == expected
        session = manager.get_session(sid, touch=False)
        assert {k: v[0] for k, v in session.writers.items()} == writers


@STORE_SETTINGS
@given(initial=json_objects, bad_key=keys, good=json_objects)
def test_a_refused_merge_changes_nothing(store_url, initial, bad_key, good):
    with NexusSessionManager(cleanup_interval=300, store=store_url, max_state_bytes=1 << 20) as manager:
        sid = manager.create_session("u").session_id
        manager.update_session_state(sid, initial)
        for bad in ({**good, bad_key: float("nan")}, {**good, bad_key: "\ud800"}, {**good, bad_key: {1: 2}}):
            with pytest.raises(SessionStateError):
                manager.update_session_state(sid, bad)
            assert manager.get_session_state(sid) == initial


@STORE_SETTINGS
@given(calls=st.lists(st.tuples(text, text, channels), min_size=1, max_size=10))
def test_apply_session_update_folds_like_session_update(store_url, calls):
    with NexusSessionManager(cleanup_interval=300, store=store_url, max_state_bytes=1 << 20) as manager:
        sid = manager.create_session("u").session_id
        expected: dict[str, Any] = {}
        for query, response, channel in calls:

            def compute(current: dict, q=query, r=response, c=channel) -> dict:
                return session_update({"query": q}, {"response": r}, current, c)

            expected = {**expected, **session_update({"query": query}, {"response": response}, expected, channel)}
            assert manager.apply_session_update(sid, compute, channel=channel) == expected
        assert manager.get_session_state(sid) == expected


# ----------------------------------------------------------------------------- TTL arithmetic
class Clock:
    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


# times on a millisecond grid keep the arithmetic exact in binary floating point
seconds = st.integers(min_value=1, max_value=10_000_000).map(lambda ms: ms / 1000)


@SETTINGS
@given(
    start=st.integers(min_value=0, max_value=2_000_000_000),
    default_ttl=seconds,
    own_ttl=seconds | st.none(),
    steps=st.lists(st.tuples(seconds, st.sampled_from(["read", "peek", "update"])), max_size=8),
)
def test_sliding_expiry_with_an_injected_clock(start, default_ttl, own_ttl, steps):
    clock = Clock(float(start))
    with NexusSessionManager(cleanup_interval=300, session_ttl=default_ttl, clock=clock) as manager:
        sid = manager.create_session("u", ttl=own_ttl).session_id
        ttl = own_ttl if own_ttl is not None else default_ttl
        expires = clock.now + ttl
        assert manager.get_session(sid, touch=False).expires_at == expires
        for wait, action in steps:
            clock.now += wait
            alive = clock.now < expires
            if action == "peek":  # a pure read: never slides
                session = manager.get_session(sid, touch=False)
                assert (session is not None) == alive
                if alive:
                    assert session.expires_at == expires
            elif action == "read":
                session = manager.get_session(sid)
                assert (session is not None) == alive
                if alive:
                    expires = clock.now + ttl
                    assert session.expires_at == expires and session.ttl == ttl
            else:
                if alive:
                    manager.update_session_state(sid, {"t": clock.now})
                    expires = clock.now + ttl
                else:
                    with pytest.raises(KeyError):
                        manager.update_session_state(sid, {"t": clock.now})
            if not alive:
                return  # expired sessions do not come back
        # exactly at the expiry it is gone; a moment before it is not
        clock.now = expires - 0.001
        assert manager.get_session(sid, touch=False) is not None
        clock.now = expires
        assert manager.get_session(sid, touch=False) is None
        assert manager.cleanup_expired_sessions() == 1


# ----------------------------------------------------------------------------- percentiles
durations = st.floats(min_value=0, max_value=1e6, allow_nan=False, allow_infinity=False)


@SETTINGS
@given(values=st.lists(durations, min_size=1, max_size=200), q=st.floats(min_value=0, max_value=100))
def test_percentile_matches_numpy(values, q):
    ordered = sorted(values)
    got = percentile(ordered, q)
    want = float(np.percentile(np.array(values, dtype=float), q))
    assert math.isclose(got, want, rel_tol=1e-12, abs_tol=1e-9 * max(1.0, ordered[-1]))
    assert ordered[0] <= got <= ordered[-1]
    assert percentile(ordered, 0) == ordered[0] and percentile(ordered, 100) == ordered[-1]


@SETTINGS
@given(values=st.lists(durations, min_size=1, max_size=100),
       qs=st.lists(st.floats(min_value=0, max_value=100), min_size=2, max_size=6))
def test_percentile_is_monotone_in_q(values, qs):
    ordered = sorted(values)
    results = [percentile(ordered, q) for q in sorted(qs)]
    assert all(a <= b + 1e-9 * max(1.0, ordered[-1]) for a, b in zip(results, results[1:], strict=False))


@SETTINGS
@given(values=st.lists(durations, min_size=1, max_size=300), window=st.integers(min_value=1, max_value=100))
def test_summaries_are_numpy_over_the_window_and_exact_over_all(values, window):
    metrics = PerformanceMetrics(window=window)
    for v in values:
        metrics.record("api", v, success=v < 5e5)
    summary = metrics.get_summary("api")
    recent = np.array(values[-window:], dtype=float)
    for key, q in (("median", 50), ("p95", 95), ("p99", 99)):
        assert math.isclose(summary[key], float(np.percentile(recent, q)), rel_tol=1e-12, abs_tol=1e-6)
    assert summary["count"] == len(values)
    assert summary["min"] == min(values) and summary["max"] == max(values)
    assert math.isclose(summary["mean"], float(np.mean(values)), rel_tol=1e-9, abs_tol=1e-6)
    assert summary["errors"] == sum(v >= 5e5 for v in values)


# ----------------------------------------------------------------------------- request bodies
#: Bodies with integers of every size: orjson makes floats of those beyond 64 bits, so the
#: body parser must send any body holding 19+ digits in a row down the exact stdlib path.
big_ints = st.integers(min_value=-(10**30), max_value=10**30)
body_values = st.recursive(
    scalars | big_ints | st.from_regex(r"[0-9a-z ]{0,30}", fullmatch=True),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(keys, inner, max_size=4),
    max_leaves=12,
)


@SETTINGS
@given(value=st.dictionaries(keys, body_values, max_size=5), spaced=st.booleans())
def test_request_bodies_decode_exactly_like_the_standard_library(value, spaced):
    import json
    import re

    from nexus_lab.platform.guard import _has_long_number, parse_json

    body = json.dumps(value, separators=(", ", ": ") if spaced else (",", ":")).encode()
    assert _has_long_number(body) == (re.search(rb"[0-9]{19}", body) is not None)
    parsed = parse_json(body, 64)
    assert parsed == json.loads(body)
    # exact: a big int stays an int of the same value, never a float near it
    assert json.dumps(parsed, sort_keys=True) == json.dumps(json.loads(body), sort_keys=True)
