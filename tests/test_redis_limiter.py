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
    server.start(port)  # back on the same port: the next check works, no restart of ours
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


def test_a_redis_limit_needs_a_rate_and_a_redis_url(make_app, redis_url):
    with pytest.raises(ConfigError, match="rate_limit"):
        make_app(rate_limit_store=redis_url)
    with pytest.raises(ConfigError, match="redis://"):
        make_app(rate_limit=5, rate_limit_store="http://example.com")
