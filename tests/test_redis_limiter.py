"""The Redis token bucket: one rate limit for every process and host sharing a redis-server.

Two limiter objects stand for two processes: each has its own connection pool,
and only Redis connects them. "Exact" for a bucket of N per minute: N calls pass
at once, then one more per 60/N seconds, so the count allowed over a measured
``elapsed`` is within [N, N + floor(elapsed * N / 60)].
"""

from __future__ import annotations

import asyncio
import math
import time

import pytest

from nexus_lab import deploy_multi_channel
from nexus_lab.errors import ConfigError, ServiceUnavailable

redis_limiter = pytest.importorskip("nexus_lab.platform.redis_limiter")
RedisTokenBucketLimiter = redis_limiter.RedisTokenBucketLimiter

N = 30


def _bound(elapsed: float) -> int:
    return N + math.floor(elapsed * N / 60)


def test_two_limiters_share_one_bucket_exactly(redis_url):
    a, b = RedisTokenBucketLimiter(N, redis_url), RedisTokenBucketLimiter(N, redis_url)
    started = time.monotonic()
    decisions = [(a if i % 2 else b).check("alice") for i in range(2 * N)]
    elapsed = time.monotonic() - started
    allowed = sum(d.allowed for d in decisions)
    assert N <= allowed <= _bound(elapsed)
    refused = [d for d in decisions if not d.allowed]
    assert refused and all(d.retry_after > 0 for d in refused)
    assert refused[0].headers()["Retry-After"] == "2"  # 60/N s for the next token, rounded up
    assert a.check("bob").allowed  # another principal has its own bucket
    a.close()
    b.close()


def test_the_async_check_takes_from_the_same_bucket(redis_url):
    limiter = RedisTokenBucketLimiter(N, redis_url)

    async def burst():
        return [await limiter.acheck("carol") for _ in range(N)]

    started = time.monotonic()
    first = asyncio.run(burst())
    later = [limiter.check("carol") for _ in range(5)]
    elapsed = time.monotonic() - started
    assert all(d.allowed for d in first)
    assert sum(d.allowed for d in first + later) <= _bound(elapsed)
    limiter.close()


def test_a_started_check_decides_once_through_every_path(redis_factory):
    """``astart`` (what the servers call): connecting first, then on the open connection,
    after the server lost the script, after a restart broke the connection, and with
    Redis down; each decision takes one token, however often it is awaited."""
    server = redis_factory()
    limiter = RedisTokenBucketLimiter(N, server.url, timeout=1.0)
    client = server.client()

    async def decide() -> list:
        first = limiter.astart("erin")  # no connection yet: connects (acheck in a task)
        again = [await first, await first]
        on_open = limiter.astart("erin")  # the connection is open: no task
        assert not isinstance(on_open, asyncio.Task)
        decisions = [*again, await on_open]
        client.script_flush()  # the server forgot the script: loaded again, then run
        decisions.append(await limiter.astart("erin"))
        client.client_kill_filter(_type="normal", skipme=True)  # our connection breaks
        decisions.append(await limiter.astart("erin"))
        return decisions

    decisions = asyncio.run(decide())
    assert all(d.allowed for d in decisions)
    assert [d.remaining for d in decisions] == [N - 1, N - 1, N - 2, N - 3, N - 4]
    port = server.port
    server.kill()

    async def down() -> None:
        await limiter.astart("erin")

    with pytest.raises(ServiceUnavailable) as info:
        asyncio.run(down())
    assert f"127.0.0.1:{port}" in str(info.value)
    client.close()
    limiter.close()


def test_a_bucket_key_outlives_its_last_check_until_it_would_be_full(redis_factory):
    """N per minute refills in 60 s: the key lives 60 s + a quarter + 1 s from its last
    renewal, renewed only once that is over a quarter (15 s) old."""
    server = redis_factory()
    client = server.client()
    limiter = RedisTokenBucketLimiter(N, server.url)
    key = "nexus:ratelimit:frank"
    try:
        limiter.check("frank")
        renewed = client.hget(key, "x")
        assert 70_000 < client.pttl(key) <= 76_000
        limiter.check("frank")
        assert client.hget(key, "x") == renewed  # a second later: not renewed
        client.hset(key, "x", repr(float(renewed) - 16))  # as if renewed 16 s ago
        client.pexpire(key, 60_000)
        limiter.check("frank")
        assert client.hget(key, "x") != renewed and 70_000 < client.pttl(key) <= 76_000
        assert N - 3 <= float(client.hget(key, "tokens")) < N - 2  # every check took a token
    finally:
        client.close()
        limiter.close()


def test_redis_down_is_a_503_naming_the_server_but_not_its_password(redis_factory):
    server = redis_factory(password="s3cret-pass")
    limiter = RedisTokenBucketLimiter(N, server.url, timeout=1.0)
    assert limiter.check("dave").allowed
    assert limiter.ping()
    port = server.port
    server.kill()
    with pytest.raises(ServiceUnavailable) as info:
        limiter.check("dave")
    assert "s3cret-pass" not in str(info.value)
    assert f"127.0.0.1:{port}" in str(info.value)
    assert info.value.headers.get("Retry-After") == "1"
    assert not limiter.ping()
    server.start()  # back on the same port: the next check works, no restart of ours
    deadline = time.monotonic() + 5
    while not limiter.ping() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert limiter.check("dave").allowed
    limiter.close()


def test_a_platform_with_a_redis_limit_answers_429_across_two_apps(make_app, serve, redis_url):
    """Two platforms (two hosts' worth of state) share the limit; /health stays open."""
    one = make_app(rate_limit=5, rate_limit_store=redis_url)
    two = make_app(rate_limit=5, rate_limit_store=redis_url)
    for app in (one, two):
        deploy_multi_channel(lambda query: {"response": query}, app, "echo")
    c1, c2 = serve(one), serve(two)
    started = time.monotonic()
    statuses = [
        (c1 if i % 2 else c2).post("/api/workflows/echo/execute", json={"inputs": {"query": "q"}})
        for i in range(10)
    ]
    elapsed = time.monotonic() - started
    allowed = sum(r.status_code == 200 for r in statuses)
    assert 5 <= allowed <= 5 + math.floor(elapsed * 5 / 60)
    refused = [r for r in statuses if r.status_code == 429]
    assert refused and "Retry-After" in refused[0].headers
    assert refused[0].json()["error"]["type"] == "rate_limited"
    assert c1.get("/health").status_code == 200


def test_a_call_over_the_redis_limit_runs_nothing_even_though_its_check_overlaps_the_read(
        make_app, serve, redis_url):
    """The API starts the shared limiter's check without waiting and reads the session
    meanwhile (one round trip to Redis): a refused call still runs no agent, writes nothing,
    records no sample, and answers 429 before any other refusal of its own."""
    from nexus_lab import NexusSessionManager, deploy_with_sessions

    calls = []

    async def agent(query: str) -> dict:
        calls.append(query)
        return {"response": query}

    app = make_app(rate_limit=3, rate_limit_store=redis_url, enable_monitoring=True)
    manager = NexusSessionManager(cleanup_interval=300, store=redis_url)
    deploy_with_sessions(agent, app, "echo", manager)
    client = serve(app)
    sid = manager.create_session("anonymous").session_id
    answers = [client.post("/api/workflows/echo/execute",
                           json={"inputs": {"query": f"q{i}"}, "session_id": sid}) for i in range(5)]
    ok = [r for r in answers if r.status_code == 200]
    refused = [r for r in answers if r.status_code != 200]
    assert len(ok) == 3 and len(calls) == 3, [r.status_code for r in answers]
    assert all(r.status_code == 429 and r.headers["Retry-After"] for r in refused)
    assert all(r.headers["X-RateLimit-Limit"] == "3" for r in answers)
    assert manager.get_session_state(sid)["turns"] == 3  # the refused calls wrote nothing
    assert app.metrics.get_summary("workflow:echo")["count"] == 3  # and left no sample
    # over the limit, a bad body is still a 429 first, as with the in-process limiter
    bad = client.post("/api/workflows/echo/execute", json={"inputs": {"nope": 1}})
    assert bad.status_code == 429, bad.text
    assert client.post("/api/workflows/missing/execute", json={"inputs": {}}).status_code == 429
    manager.close()


def test_a_redis_limit_needs_a_rate_and_a_redis_url(make_app, redis_url):
    with pytest.raises(ConfigError, match="rate_limit"):
        make_app(rate_limit_store=redis_url)
    with pytest.raises(ConfigError, match="redis://"):
        make_app(rate_limit=5, rate_limit_store="http://example.com")
