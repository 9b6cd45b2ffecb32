"""The ``Nexus`` platform: registry, the single execution path, health, servers.

Example::

    from nexus_lab import Nexus, AIAssistant, deploy_multi_channel

    app = Nexus(auto_discovery=False)
    channels = deploy_multi_channel(AIAssistant(), app, "assistant")
    app.invoke("assistant", {"query": "What is AI?"})
    # {'response': '[mock:mock-model] You said: What is AI?'}

    with app.running():                 # API + MCP on free ports, in the background
        print(app.api_url, app.mcp_url)
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import threading
import time
import uuid
import warnings
from collections import OrderedDict
from collections.abc import Iterator
from types import SimpleNamespace
from typing import TYPE_CHECKING, Any

from ..errors import (
    AgentExecutionError,
    ConfigError,
    DeploymentExists,
    DeploymentNotFound,
    ExecutionTimeout,
    NexusError,
    SessionNotFound,
    SessionStateError,
)
from .deployment import (
    CHANNELS,
    Compiled,
    Deployment,
    Execution,
    encode_outputs,
    normalize_outputs,
    session_update,
    validate_name,
)
from .security import ApiKeyAuth, RateLimiter, TokenBucketLimiter, validate_rate_limit
from .server import Serving

if TYPE_CHECKING:
    from ..metrics import PerformanceMetrics
    from ..sessions import NexusSessionManager

__all__ = ["Nexus"]

logger = logging.getLogger("nexus_lab")

#: Entry-point group scanned by ``auto_discovery=True``.
DISCOVERY_GROUP = "nexus_lab.deployments"


def _check_timeout(name: str, value: Any) -> float | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value < float("inf"):
        raise ConfigError(f"{name} must be a positive number of seconds or None, got {value!r}", field=name)
    return float(value)


def _check_count(name: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ConfigError(f"{name} must be a positive integer, got {value!r}", field=name)
    return value


def _check_port(name: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= 65535:
        raise ConfigError(f"{name} must be an integer between 0 and 65535 (0 picks a free port), got {value!r}", field=name)
    return value


class Nexus:
    """One platform serving deployments on the HTTP API, the CLI and MCP.

    Every channel runs a deployment through :meth:`execute`, so validation,
    sessions, auth, rate limits and metrics behave the same everywhere.

    Args:
        auto_discovery: load deployments from installed ``nexus_lab.deployments``
            entry points (never by executing files in the working directory).
        api_port, mcp_port: TCP ports; ``0`` picks a free one (see :attr:`api_url`).
        host: bind address, loopback by default.
        enable_auth: require an API key on the API and on MCP over HTTP.
        enable_monitoring: record every call in :attr:`metrics` and serve ``/metrics``.
        rate_limit: requests per minute per principal, or None.
        rate_limit_store: ``"redis://host:port/db"`` to share the rate limit through Redis
            (every worker and host that uses the same server counts together); default:
            a token bucket in this process.
        api_keys: ``{"key": "user-id"}``; defaults to ``$NEXUS_API_KEYS``.
        session_manager: the sessions used by ``session_id`` on every channel
            (an in-memory manager is created on first use when omitted).
        max_body_bytes: largest accepted request body on the API.
        deploy_cache_size: entries kept by this app's deployment cache.
        worker_threads: threads that run sync agents, so a slow agent never blocks the server.
        execution_timeout: seconds a served call (API, CLI, MCP) may take before the caller
            gets 504; a deployment's own ``timeout=`` wins. ``None``: no limit. A timed-out
            async agent is cancelled; a sync one cannot be stopped, so its worker thread is
            written off and the pool may start another one in its place.
        max_concurrency: calls of one sync deployment holding a worker thread at once; more
            wait their turn without holding one (default: three quarters of ``worker_threads``),
            so that one hung agent cannot take every worker; a deployment's own
            ``max_concurrency=`` wins.
        max_json_depth: deepest nesting of arrays/objects accepted in a JSON request body
            (API) and in MCP tool arguments; deeper is refused with 400 naming the limit.
        allowed_hosts: ``Host`` header values the API and MCP answer (``"name"`` any port,
            ``"name:port"``, ``"*.example.com"``, ``"*"`` = any); None: the loopback names
            when bound to a loopback address, no check otherwise. Others get 421.
        allowed_origins: ``Origin`` values accepted when the header is present
            (``"https://app.example.com"``, ``"http://localhost:*"``, ``"*"``); None: the
            request's own origin, plus the loopback origins when bound to loopback. Others get 403.
        cors_origins: origins a browser may call the API from (Starlette's CORSMiddleware,
            also accepted by the ``Origin`` check); None: no CORS headers at all.
        forwarded_allow_ips: proxy addresses (or ``"*"``) whose ``X-Forwarded-For`` /
            ``X-Forwarded-Proto`` are trusted for the client address (rate limit key);
            None: forwarded headers are ignored.
        max_connections: open connections per server (API, MCP); at the cap, the connection
            that has waited longest for its request head is closed to make room, and
            requests beyond it get 503 (uvicorn's ``limit_concurrency``).
        max_header_bytes: largest request line + headers accepted; more gets 431.
        header_timeout: seconds a connection has to send a complete request head after it
            opens or its previous response ends; then it is closed (408 if it sent part of one).
        body_timeout: seconds a request's body has to arrive once its head has; then 408.
        keep_alive_timeout: seconds an idle keep-alive connection is kept open.
    """

    def __init__(
        self,
        auto_discovery: bool = False,
        api_port: int = 8000,
        mcp_port: int = 3001,
        host: str = "127.0.0.1",
        enable_auth: bool = False,
        enable_monitoring: bool = False,
        rate_limit: int | None = None,
        api_keys: dict[str, str] | None = None,
        session_manager: NexusSessionManager | None = None,
        *,
        max_body_bytes: int = 1024 * 1024,
        deploy_cache_size: int = 128,
        worker_threads: int = 40,
        execution_timeout: float | None = 60.0,
        max_concurrency: int | None = None,
        rate_limit_store: str | None = None,
        title: str = "nexus_lab",
        max_json_depth: int = 64,
        allowed_hosts: list[str] | None = None,
        allowed_origins: list[str] | None = None,
        cors_origins: list[str] | None = None,
        forwarded_allow_ips: list[str] | str | None = None,
        max_connections: int = 1000,
        max_header_bytes: int = 16 * 1024,
        header_timeout: float = 10.0,
        body_timeout: float = 30.0,
        keep_alive_timeout: float = 5.0,
    ) -> None:
        self.api_port = _check_port("api_port", api_port)
        self.mcp_port = _check_port("mcp_port", mcp_port)
        if not isinstance(host, str) or not host:
            raise ConfigError(f"host must be a non-empty string, got {host!r}", field="host")
        self.host = host
        self.enable_auth = bool(enable_auth)
        self.enable_monitoring = bool(enable_monitoring)
        self.rate_limit = validate_rate_limit(rate_limit)
        if not isinstance(max_body_bytes, int) or isinstance(max_body_bytes, bool) or max_body_bytes <= 0:
            raise ConfigError("max_body_bytes must be a positive integer", field="max_body_bytes")
        self.max_body_bytes = max_body_bytes
        self.title = title
        # HTTP hardening (checked when the servers start: platform/security.py HTTPPolicy)
        self.max_json_depth = max_json_depth
        self.allowed_hosts = allowed_hosts
        self.allowed_origins = allowed_origins
        self.cors_origins = cors_origins
        self.forwarded_allow_ips = forwarded_allow_ips
        self.max_connections = max_connections
        self.max_header_bytes = max_header_bytes
        self.header_timeout = header_timeout
        self.body_timeout = body_timeout
        self.keep_alive_timeout = keep_alive_timeout
        self.auth: ApiKeyAuth | None = ApiKeyAuth.from_config(api_keys) if self.enable_auth else None
        if api_keys is not None and not self.enable_auth:
            ApiKeyAuth.from_config(api_keys)  # still validate what was given
        self.rate_limit_store: str | None = None
        self.rate_limiter: RateLimiter | None = None
        if rate_limit_store is not None:
            self.use_rate_limit_store(rate_limit_store)
        elif self.rate_limit:
            self.rate_limiter = TokenBucketLimiter(self.rate_limit)
        self._session_manager = session_manager
        self._owns_session_manager = False
        self._metrics: PerformanceMetrics | None = None
        self._deployments: dict[str, Deployment] = {}
        self._lock = threading.RLock()
        self._cache: OrderedDict[tuple, Compiled] = OrderedDict()
        self._cache_size = max(0, int(deploy_cache_size))
        self._cache_hits = 0
        self._cache_misses = 0
        self._serving = Serving(self)
        self._executor: Any = None  # WorkerPool for sync agents, created on first use
        if not isinstance(worker_threads, int) or isinstance(worker_threads, bool) or worker_threads < 1:
            raise ConfigError("worker_threads must be a positive integer", field="worker_threads")
        self.worker_threads = worker_threads
        self.execution_timeout = _check_timeout("execution_timeout", execution_timeout)
        if max_concurrency is None:
            max_concurrency = max(1, worker_threads * 3 // 4)
        self.max_concurrency = _check_count("max_concurrency", max_concurrency)
        self.started_at = time.time()
        self.auto_discovery = bool(auto_discovery)
        if self.auto_discovery:
            self._discover()

    # ------------------------------------------------------------------
    # registry
    # ------------------------------------------------------------------
    def register(self, name: str, agent_or_function: Any) -> Deployment:
        """Register an agent (an object with ``process``) or a typed function under ``name``.

        A name already taken raises :class:`DeploymentExists`; the ``deploy_*``
        functions replace on purpose.
        """
        validate_name(name)
        with self._lock:
            if name in self._deployments:
                raise DeploymentExists(
                    f"a deployment named {name!r} already exists; unregister it first or use "
                    "deploy_multi_channel(...) to replace it"
                )
            return self._deploy(name, agent_or_function, channels=CHANNELS)

    def deploy(
        self,
        name: str,
        agent_or_function: Any,
        *,
        channels: tuple[str, ...] | set[str] = CHANNELS,
        use_cache: bool = True,
        session_manager: NexusSessionManager | None = None,
        timeout: float | None = None,
        max_concurrency: int | None = None,
        merge_channels: bool = False,
    ) -> Deployment:
        """Register ``agent_or_function`` under ``name``, replacing what had that name.

        What the ``deploy_*`` functions call. ``session_manager`` gives the
        deployment sessions and becomes the platform's manager (the one behind
        ``/api/sessions``); a platform has one: a different manager than the one
        it already uses is refused. ``merge_channels`` adds ``channels`` to an
        existing deployment of the same agent instead of replacing its channels.

        >>> app.deploy("assistant", AIAssistant(), channels=("api", "mcp"), timeout=30)
        """
        if session_manager is not None:
            self.use_session_manager(session_manager)
        return self._deploy(
            name, agent_or_function, channels=channels, use_cache=use_cache,
            session_manager=session_manager, replace=True, merge_channels=merge_channels,
            timeout=timeout, max_concurrency=max_concurrency,
        )

    def use_session_manager(self, manager: NexusSessionManager) -> None:
        """Make ``manager`` the platform's session manager (the one owner of sessions).

        Allowed while the platform has none, or only the in-memory one it made
        itself (which is closed); another manager than the current one raises
        :class:`ConfigError`, because two managers would split the sessions that
        ``/api/sessions``, the CLI and MCP see.
        """
        from ..sessions import NexusSessionManager

        if not isinstance(manager, NexusSessionManager):
            raise TypeError(f"session_manager must be a NexusSessionManager, got {type(manager).__name__}")
        with self._lock:
            current = self._session_manager
            if current is manager:
                return
            if current is not None and not self._owns_session_manager:
                raise ConfigError(
                    "this platform already uses another session manager; deploy with the same one "
                    "(app.session_manager) so that every channel sees the same sessions",
                    field="session_manager",
                )
            self.session_manager = manager

    def unregister(self, name: str) -> None:
        with self._lock:
            if self._deployments.pop(name, None) is None:
                raise DeploymentNotFound(f"no deployment named {name!r}")

    def _deploy(
        self,
        name: str,
        target: Any,
        *,
        channels: tuple[str, ...] | set[str],
        use_cache: bool = True,
        session_manager: Any = None,
        replace: bool = False,
        merge_channels: bool = False,
        timeout: float | None = None,
        max_concurrency: int | None = None,
    ) -> Deployment:
        """Compile (or fetch from this app's cache) and register a deployment."""
        timeout = _check_timeout("timeout", timeout)
        if max_concurrency is not None:
            _check_count("max_concurrency", max_concurrency)
        if target is None:
            raise ValueError("Agent cannot be None: pass an agent with process() or a typed function")
        validate_name(name)
        _check_provider(target)
        key = _cache_key(name, target) if use_cache and self._cache_size else None
        compiled = None
        with self._lock:
            if key is not None:
                compiled = self._cache.get(key)
                if compiled is not None:
                    self._cache.move_to_end(key)
                    self._cache_hits += 1
        if compiled is None:
            compiled = Compiled.build(target)
            with self._lock:
                self._cache_misses += 1
                if key is not None:
                    self._cache[key] = compiled
                    while len(self._cache) > self._cache_size:
                        self._cache.popitem(last=False)
        with self._lock:
            old = self._deployments.get(name)
            if old is not None and not replace:
                raise DeploymentExists(f"a deployment named {name!r} already exists")
            chans = set(channels)
            manager = session_manager
            if old is not None and merge_channels and old.target is target:
                chans |= old.channels
                manager = manager or old.session_manager
            dep = Deployment(
                name=name, target=target, compiled=compiled, channels=chans, session_manager=manager,
                timeout=timeout, max_concurrency=max_concurrency,
            )
            self._deployments[name] = dep
        return dep

    def get_deployment(self, name: str, channel: str | None = None) -> Deployment:
        """The deployment called ``name``; with ``channel``, only if exposed there."""
        dep = self._deployments.get(name)
        if dep is None or (channel is not None and channel not in dep.channels):
            where = f" on channel {channel!r}" if channel and dep is not None else ""
            known = ", ".join(sorted(self._deployments)) or "none"
            raise DeploymentNotFound(f"no deployment named {name!r}{where} (deployed: {known})")
        return dep

    @property
    def deployments(self) -> dict[str, Deployment]:
        """A snapshot of the registry, by name."""
        return dict(self._deployments)

    def deploy_cache_info(self) -> dict[str, int]:
        """Hits, misses and size of this app's deployment cache."""
        return {"hits": self._cache_hits, "misses": self._cache_misses, "size": len(self._cache), "maxsize": self._cache_size}

    def clear_deploy_cache(self) -> None:
        with self._lock:
            self._cache.clear()

    # ------------------------------------------------------------------
    # sessions and metrics
    # ------------------------------------------------------------------
    @property
    def session_manager(self) -> NexusSessionManager:
        """The platform's session manager (an in-memory one is created on first use)."""
        if self._session_manager is None:
            with self._lock:
                if self._session_manager is None:
                    from ..sessions import NexusSessionManager

                    self._session_manager = NexusSessionManager(cleanup_interval=300, session_ttl=7200)
                    self._owns_session_manager = True
        return self._session_manager

    @property
    def current_session_manager(self) -> NexusSessionManager | None:
        """The session manager if the platform has one yet; unlike :attr:`session_manager`
        it never creates one (views that only show sessions use it)."""
        return self._session_manager

    @session_manager.setter
    def session_manager(self, manager: NexusSessionManager) -> None:
        if self._owns_session_manager and self._session_manager is not None and self._session_manager is not manager:
            self._session_manager.close()
        self._session_manager = manager
        self._owns_session_manager = False

    @property
    def metrics(self) -> PerformanceMetrics:
        """Latency per channel (``api``, ``cli``, ``mcp``) and per deployment (``workflow:NAME``)."""
        if self._metrics is None:
            from ..metrics import PerformanceMetrics

            with self._lock:
                if self._metrics is None:
                    self._metrics = PerformanceMetrics()
        return self._metrics

    # ------------------------------------------------------------------
    # the single execution path
    # ------------------------------------------------------------------
    def invoke(
        self,
        name: str,
        inputs: dict[str, Any] | None = None,
        channel: str = "api",
        session_id: str | None = None,
        *,
        principal: str | None = None,
    ) -> dict[str, Any]:
        """Run deployment ``name`` with ``inputs`` and return its outputs.

        >>> app.invoke("assistant", {"query": "hi"}, session_id=sid)
        {'response': '...'}
        """
        return self.execute(name, inputs, channel=channel, session_id=session_id, principal=principal).outputs

    def execute(
        self,
        name: str | Deployment,
        inputs: dict[str, Any] | None = None,
        *,
        channel: str = "api",
        session_id: str | None = None,
        principal: str | None = None,
        coerce_strings: bool = False,
        started: float | None = None,
    ) -> Execution:
        """Like :meth:`invoke`, returning an :class:`Execution` (outputs, session id, times).

        Runs on the calling thread (an async-only agent runs to completion).
        ``started`` is the ``time.perf_counter()`` at which the request reached
        the platform (default: now); the recorded latency is measured from it.
        """
        started = time.perf_counter() if started is None else started
        dep = self._lookup(name, channel)
        return self._run_sync(dep, inputs, channel, session_id, principal, coerce_strings, started)

    async def aexecute(
        self,
        name: str | Deployment,
        inputs: dict[str, Any] | None = None,
        *,
        channel: str = "api",
        session_id: str | None = None,
        principal: str | None = None,
        coerce_strings: bool = False,
        started: float | None = None,
    ) -> Execution:
        """Async :meth:`execute`, what the servers call.

        The same steps as :meth:`execute` (one implementation, :meth:`_flow`);
        only where they run differs: a sync agent runs the whole call in a worker
        thread, an async one is awaited on the loop. Session calls are made on the
        loop for the memory store, awaited through the store's native twins (SQLite's
        own threads, Redis's pipelined connection), and run in worker threads for a
        blocking store without them: never a blocking call on the loop. A rate-limit
        check the guard left in flight is settled before the agent runs.
        """
        guard = _guard()
        if started is None:
            started = guard.request_started.get() or time.perf_counter()
        # the request's rate-limit check, when the guard left it in flight (a shared limiter):
        # settled before the agent runs, so that only reads happen before it is decided
        admission = guard.pending_admission.get()
        dep = self._lookup(name, channel)
        timeout = dep.timeout or self.execution_timeout
        if not dep.compiled.is_async:
            if admission is not None:
                await guard.settle_rate(admission)
            ticket = _Ticket()
            pool = self._worker_pool()
            call = pool.run(
                functools.partial(
                    self._run_sync, dep, inputs, channel, session_id, principal, coerce_strings,
                    started, ticket,
                ),
                key=dep,
                limit=dep.max_concurrency or self.max_concurrency,
            )
            if timeout is None:
                return await call
            try:
                return await asyncio.wait_for(call, timeout)
            except asyncio.TimeoutError:
                if ticket.abandon():  # the agent still holds its thread: let the pool replace it
                    pool.abandon()
                raise self._timed_out(dep, channel, started, timeout) from None
        flow = self._flow(dep, inputs, channel, session_id, principal, coerce_strings, started)
        manager = dep.session_manager or self._session_manager
        # where the session steps run: called on the loop when the store never blocks
        # (memory); awaited when its twins are native (SQLite's I/O threads, Redis); else in
        # worker threads
        direct = manager is None or not manager.blocking
        offload = None
        if not direct and not manager.async_native:
            offload = self._worker_pool().run
        value: Any = None
        error: BaseException | None = None
        while True:
            try:
                step = flow.send(value) if error is None else flow.throw(error)
            except StopIteration as stop:
                return stop.value
            value = error = None
            try:
                if step[0] is _AGENT:
                    if admission is not None:
                        try:
                            await guard.settle_rate(admission)
                        except BaseException:
                            flow.close()  # refused before its agent: nothing runs or is recorded
                            raise
                    if timeout is None:
                        value = await dep.acall(step[2], step[3])
                    else:
                        try:
                            value = await _within(dep.acall(step[2], step[3]), timeout)
                        except asyncio.TimeoutError:  # the agent's coroutine was cancelled
                            error = self._timed_out(dep, channel, started, timeout, cancelled=True)
                elif direct:
                    value = step[0](*step[2], **step[3])
                elif offload is None:
                    value = await step[1](*step[2], **step[3])
                else:
                    call = functools.partial(step[0], *step[2], **step[3])
                    if step[4] is None:  # writes: as many at once as come (group commit)
                        value = await offload(call)
                    else:  # reads: a few threads, back to back, so they don't fight for the GIL
                        value = await offload(call, key=step[4], limit=_READ_THREADS)
            except BaseException as exc:  # delivered to the flow, which maps and records it
                error = exc

    def _run_sync(
        self, dep, inputs, channel, session_id, principal, coerce_strings, started, ticket=None
    ) -> Execution:
        """Drive :meth:`_flow` on this thread.

        With a ``ticket`` whose caller gave up (a timeout), the steps after the agent
        are not run: nothing is written for a call the caller saw fail.
        """
        if ticket is not None and not ticket.start():
            raise ExecutionTimeout(f"deployment {dep.name!r} timed out before it started")
        flow = self._flow(dep, inputs, channel, session_id, principal, coerce_strings, started)
        value: Any = None
        error: BaseException | None = None
        try:
            while True:
                try:
                    step = flow.send(value) if error is None else flow.throw(error)
                except StopIteration as stop:
                    return stop.value
                value = error = None
                if ticket is not None and ticket.abandoned:
                    error = ExecutionTimeout(f"deployment {dep.name!r} timed out")
                    continue
                try:
                    if step[0] is _AGENT:
                        value = dep.call(step[2], step[3])
                    else:
                        value = step[0](*step[2], **step[3])
                except BaseException as exc:
                    error = exc
        finally:
            if ticket is not None and ticket.finish():
                self._worker_pool().reclaim()

    def _timed_out(self, dep, channel, started, timeout, *, cancelled=False) -> ExecutionTimeout:
        what = "cancelled" if cancelled else "abandoned (its worker thread is written off until it returns)"
        if self.enable_monitoring:  # the flow does not record a timeout itself
            elapsed = time.perf_counter() - started
            self._record(dep.name, channel, elapsed, elapsed, False)
        return ExecutionTimeout(
            f"deployment {dep.name!r} did not finish within its timeout of {timeout:g} s; the call was {what}"
        )

    def _lookup(self, name: str | Deployment, channel: str) -> Deployment:
        if not isinstance(channel, str) or not channel:
            raise ValueError(f"channel must be a non-empty string, got {channel!r}")
        # channels other than api/cli/mcp (e.g. "notebook") reach every deployment
        check = channel if channel in CHANNELS else None
        if isinstance(name, Deployment):
            if check is not None and check not in name.channels:
                return self.get_deployment(name.name, check)
            return name
        return self.get_deployment(name, check)

    def _flow(self, dep, inputs, channel, session_id, principal, coerce_strings, started):
        """The one execution path, as a generator of the steps that may block.

        It yields ``(_AGENT, None, values, state, None)`` for the agent call and
        ``(fn, afn, args, kwargs, read_key)`` for each session-store call: the
        manager's sync method and its awaitable twin, and ``read_key`` (the
        manager, for reads; None for writes); a driver
        (:meth:`_run_sync` or :meth:`aexecute`) runs each step where it belongs and
        sends the result (or throws the exception) back. Validation, ownership,
        the session read and write, output encoding, error mapping and metrics
        are here once, so the sync and async paths cannot disagree.
        """
        agent_seconds = reached = 0.0
        try:
            values = dep.schema.validate(inputs, coerce_strings=coerce_strings)
            manager = None
            new_session = False
            state: dict[str, Any] = {}
            if session_id is not None:
                manager = dep.session_manager or self.session_manager
                # one pure read (ownership checked in it); the expiry slides with the write below
                session = yield (
                    manager.get_session, manager.aget_session, (session_id,),
                    {"channel": channel, "user_id": principal, "touch": False}, manager,
                )
                if session is None:
                    raise SessionNotFound(session_id)
                # decoded only for an agent that takes it (a stored snapshot decodes on use)
                if dep.compiled.accepts_state:
                    state = session.state
                _check_room(manager, session, values, channel)
            elif dep.session_manager is not None:
                # a new session is created with the call's first write, after the agent: a call
                # that fails (or does not fit) leaves no empty session behind
                manager = dep.session_manager
                _check_room(manager, _NO_SESSION, values, channel)
                new_session = True
            agent_started = reached = time.perf_counter()
            try:
                result = yield (_AGENT, None, values, state, None)
            except NexusError:
                raise
            except Exception as exc:
                raise self._agent_error(dep.name, exc) from exc
            finally:
                agent_seconds = time.perf_counter() - agent_started
            outputs = normalize_outputs(result)
            body = encode_outputs(dep.name, outputs)
            if manager is not None:
                if new_session:
                    session = yield (
                        manager.create_session, manager.acreate_session,
                        (principal or "anonymous",), {}, None,
                    )
                    session_id = session.session_id
                # computed from the state current at write time, atomically: concurrent calls on one
                # session (from any channel or process) never lose a turn
                try:
                    yield (
                        manager.apply_session_update,
                        manager.aapply_session_update,
                        (session_id, functools.partial(session_update, values, outputs, channel=channel)),
                        {"channel": channel, "pure": True},  # session_update builds new values
                        None,
                    )
                except Exception:
                    if new_session:  # the call failed: its new session goes with it
                        try:
                            yield (manager.delete_session, manager.adelete_session, (session_id,), {}, None)
                        except Exception:
                            logger.warning("could not remove the session of a failed call", exc_info=True)
                    raise
        except ExecutionTimeout:
            raise  # recorded where the caller was told (see _timed_out)
        except BaseException as exc:
            # a call refused before its agent ran (bad input, unknown session, the rate limit:
            # the flow is closed then) is a client error, not a sample of how long calls take
            if self.enable_monitoring and reached and not isinstance(exc, GeneratorExit):
                self._record(dep.name, channel, time.perf_counter() - started, agent_seconds, False)
            raise
        elapsed = time.perf_counter() - started
        if self.enable_monitoring:
            self._record(dep.name, channel, elapsed, agent_seconds, True)
        return Execution(dep.name, outputs, session_id, elapsed * 1000.0, channel, agent_seconds * 1000.0, body)

    def _worker_pool(self):
        """The threads sync agents run in (see :mod:`nexus_lab.platform.workers`)."""
        pool = self._executor
        if pool is None:
            from .workers import WorkerPool

            with self._lock:
                if self._executor is None:
                    self._executor = WorkerPool(self.worker_threads)
                pool = self._executor
        return pool

    def _record(self, name: str, channel: str, elapsed: float, agent: float, ok: bool) -> None:
        """One call in :attr:`metrics`: what the caller waited (per channel and per
        deployment) and the agent's own part of it (``agent:CHANNEL``)."""
        keys = _METRIC_KEYS.get((name, channel))
        if keys is None:
            keys = _METRIC_KEYS[(name, channel)] = (channel, f"workflow:{name}", f"agent:{channel}")
        self.metrics.record_samples(((keys[0], elapsed), (keys[1], elapsed), (keys[2], agent)), ok)

    @staticmethod
    def _agent_error(name: str, exc: Exception) -> AgentExecutionError:
        error_id = uuid.uuid4().hex[:12]
        logger.error("deployment %r failed (error id %s)", name, error_id, exc_info=exc)
        return AgentExecutionError(
            f"deployment {name!r} failed with {type(exc).__name__}; see the server log for error id {error_id}",
            error_id,
        )

    # ------------------------------------------------------------------
    # health
    # ------------------------------------------------------------------
    def channel_status(self) -> dict[str, dict[str, Any]]:
        """State and URL of each channel: ``registered``, ``serving``, ``stopped`` or ``failed``.

        ``serving`` is checked, not remembered: a server thread that died reports ``failed``.
        """
        state, error = self._serving.channel_state()
        urls = {"api": self.api_url, "cli": self.api_url, "mcp": self.mcp_url}
        out = {}
        for ch in CHANNELS:
            entry: dict[str, Any] = {
                "state": state,
                "url": urls[ch] if state == "serving" else None,
                "deployments": sorted(n for n, d in self._deployments.items() if ch in d.channels),
            }
            if error:
                entry["error"] = error
            out[ch] = entry
        return out

    def health_check(self) -> dict[str, Any]:
        """Platform health, checked now.

        ``status`` is ``healthy`` when nothing is wrong (serving, or not started
        yet), ``stopped`` after :meth:`stop`, and ``degraded`` when a channel's
        server failed or died, or a shared store a call needs (Redis sessions, a
        Redis rate limit) does not answer; ``problems`` then says which.

        >>> app.health_check()["status"]
        'healthy'
        """
        channels = self.channel_status()
        states = {s["state"] for s in channels.values()}
        status = "degraded" if "failed" in states else "stopped" if "stopped" in states else "healthy"
        problems: list[str] = []
        # the shared services a call may need: checked now (a round trip each), so call this
        # off the event loop (the /health endpoint runs it in a worker thread)
        manager = self._session_manager
        store_ok = getattr(manager, "store_healthy", None)
        if store_ok is not None and not store_ok():
            problems.append(f"the session store ({manager.store.name}) is unreachable")
        ping = getattr(self.rate_limiter, "ping", None)
        if ping is not None and not ping():
            problems.append("the shared rate limiter's Redis is unreachable")
        if problems and status == "healthy":
            status = "degraded"
        health: dict[str, Any] = {
            "status": status,
            "channels": channels,
            "deployments": sorted(self._deployments),
            "auth": self.enable_auth,
            "rate_limit": self.rate_limit,
            "monitoring": self.enable_monitoring,
            "uptime_seconds": round(time.time() - self.started_at, 3),
        }
        if problems:
            health["problems"] = problems
        elif manager is not None:
            m = manager.get_session_metrics()
            health["sessions"] = {"active": m.get("active_sessions"), "store": m.get("store")}
        return health

    # ------------------------------------------------------------------
    # serving (platform/server.py holds how; these are the public handles)
    # ------------------------------------------------------------------
    @property
    def api_url(self) -> str | None:
        """``http://host:port`` of the running API (None when not serving)."""
        return self._serving.api_url

    @property
    def mcp_url(self) -> str | None:
        """The MCP streamable-HTTP endpoint of the running platform (None when not serving)."""
        return self._serving.mcp_url

    @property
    def is_running(self) -> bool:
        """True once both servers accept connections, until :meth:`stop`."""
        return self._serving.is_running

    def start(self, block: bool = True, *, sockets: Any = None) -> None:
        """Serve the API and MCP.

        ``block=True`` (default) runs until Ctrl-C, SIGTERM or :meth:`stop`;
        ``block=False`` returns once both servers accept connections, leaving a
        notebook kernel free. ``sockets``: listening (API, MCP) sockets to serve
        on instead of binding ``host``/ports (what a ``nexus serve --workers N``
        worker inherits).
        """
        self._serving.start(block, sockets=sockets)

    def use_rate_limit_store(self, url: str) -> None:
        """Share this platform's rate limit through the Redis at ``url`` (every worker and
        host using it counts together). The platform must have ``rate_limit=N``."""
        if not self.rate_limit:
            raise ConfigError("a rate_limit_store needs rate_limit=N as well", field="rate_limit_store")
        from .redis_limiter import RedisTokenBucketLimiter

        self.rate_limiter = RedisTokenBucketLimiter(self.rate_limit, url)
        self.rate_limit_store = url

    def shared_state_problems(self) -> list[str]:
        """Why this platform cannot run as several worker processes (empty: it can).

        Sessions kept in one process's memory, or a rate limit counted per process,
        would split between workers.
        """
        problems = []
        manager = self.session_manager
        if manager.store.name == "memory":
            problems.append(
                "its sessions live in one process's memory: pass --sessions redis://HOST:PORT/DB "
                "(or sqlite:///FILE for workers on one host)"
            )
        if self.rate_limiter is not None and self.rate_limit_store is None:
            problems.append(
                "its rate limit would be counted per worker: pass --rate-limit-store redis://HOST:PORT/DB"
            )
        return problems

    def wait(self, stop: threading.Event | None = None) -> None:
        """Block until Ctrl-C, SIGTERM, :meth:`stop` from another thread (or ``stop`` is
        set), then stop serving. ``start(block=True)`` is ``start(block=False)`` + ``wait()``.

        >>> app.start(block=False); print(app.api_url); app.wait()
        """
        self._serving.wait(stop)

    def stop(self) -> None:
        """Stop serving (idempotent); in-flight requests finish first."""
        self._serving.stop()

    @contextlib.contextmanager
    def running(self) -> Iterator[Nexus]:
        """``with app.running(): ...`` starts in the background and stops on exit."""
        self.start(block=False)
        try:
            yield self
        finally:
            self.stop()

    def release_workers(self) -> None:
        """End the worker threads (sync agents, blocking store calls) once their calls are
        done; the next call starts new ones. :meth:`close` does this too."""
        pool, self._executor = self._executor, None
        if pool is not None:
            pool.close()

    def close(self) -> None:
        """Stop serving, release the worker threads and the session manager this app created."""
        self.stop()
        self.release_workers()
        if self._owns_session_manager and self._session_manager is not None:
            self._session_manager.close()

    # ------------------------------------------------------------------
    def _discover(self) -> None:
        from importlib.metadata import entry_points

        for ep in entry_points(group=DISCOVERY_GROUP):
            try:
                target = ep.load()
                if isinstance(target, type):
                    target = target()
                self._deploy(ep.name, target, channels=CHANNELS, replace=True)
            except Exception as exc:  # one broken plugin must not stop the platform
                warnings.warn(f"auto_discovery: could not load {ep.name!r} ({ep.value}): {exc}", stacklevel=3)

    def __repr__(self) -> str:
        state = "serving" if self.is_running else "not serving"
        return f"Nexus(deployments={sorted(self._deployments)!r}, {state})"

    def _repr_html_(self) -> str:
        from ..render import nexus_html

        return nexus_html(self)


#: What :func:`_check_room` sees for a call that will start a new session.
_NO_SESSION = SimpleNamespace(state={}, state_bytes=2)

#: Metric category names per (deployment, channel), built once.
_METRIC_KEYS: dict[tuple[str, str], tuple[str, str, str]] = {}

#: Threads that may run blocking session reads at once (per manager). Many threads reading
#: SQLite at once mostly trade the GIL (measured: 32 readers gave 7.6k reads/s, one thread
#: running them back to back 21k/s); writes are not limited: group commit wants them together.
_READ_THREADS = 2

#: Marks the agent call among the steps :meth:`Nexus._flow` yields.
_AGENT = object()


class _Ticket:
    """One served sync call, shared by the loop (which may give up on it) and its worker."""

    __slots__ = ("abandoned", "_started", "_done", "_lock")

    def __init__(self) -> None:
        self.abandoned = False
        self._started = self._done = False
        self._lock = threading.Lock()

    def start(self) -> bool:
        """The worker begins the call; False if the caller already gave up (skip it)."""
        with self._lock:
            self._started = True
            return not self.abandoned

    def abandon(self) -> bool:
        """The caller gives up; True if the call is running now (it holds its thread)."""
        with self._lock:
            self.abandoned = True
            return self._started and not self._done

    def finish(self) -> bool:
        """The call ended; True if it had been abandoned while running."""
        with self._lock:
            self._done = True
            return self.abandoned


def _check_room(manager: Any, session: Any, values: dict[str, Any], channel: str) -> None:
    """Refuse, before the agent runs, a call whose inputs alone would overflow the session.

    The state after the call holds the query twice (``last_query`` and the
    history); with an empty response it must still fit ``max_state_bytes``.
    """
    limit = getattr(manager, "max_state_bytes", None)
    if limit is None:
        return
    # Cheap bound first: the call adds the query at most twice (last_query, history) plus
    # a few small keys to what is stored; only near the limit is the exact size computed.
    query = values["query"] if "query" in values else values
    if query.__class__ is str:  # a character is at most 6 bytes of JSON ("\u001f"), quotes 2
        added = 2 * (6 * len(query) + 2) + 256
    else:
        from ..sessions.models import encode_json

        try:
            added = 2 * len(encode_json(query)) + 256
        except (TypeError, ValueError):
            return
    if session.state_bytes + added <= limit:
        return
    from ..sessions.models import encode_json

    state = session.state
    merged = dict(state)
    merged.update(session_update(values, {}, state, channel))
    try:
        size = len(encode_json(merged))
    except (TypeError, ValueError):
        return  # not JSON: the write after the agent names the problem
    if size > limit:
        raise SessionStateError(
            f"this call would make the session state {size:,} bytes as JSON, over its "
            f"{limit:,}-byte limit (max_state_bytes), before the agent's answer; send a shorter "
            "input or start a new session"
        )


async def _within(coro: Any, seconds: float) -> Any:
    """Await the agent's coroutine ``coro`` with a deadline of ``seconds``.

    An agent that finishes without suspending (no I/O to wait for, like the mock
    provider) finishes on its first step, so that step runs before any timer is
    armed: a deadline costs ~6 us a call here, most of a fast agent's overhead.
    Only a coroutine that suspends gets one; it continues under it, and on expiry
    the cancellation is thrown into it as into any awaited coroutine.
    """
    try:
        first = coro.send(None)
    except StopIteration as done:
        return done.value
    async with _deadline(seconds):
        return await _Continue(coro, first)


class _Continue:
    """Awaitable that resumes a coroutine already started by hand (see :func:`_within`)."""

    __slots__ = ("coro", "first")

    def __init__(self, coro: Any, first: Any) -> None:
        self.coro, self.first = coro, first

    def __await__(self) -> Any:
        coro, value = self.coro, self.first
        while True:
            try:
                sent = yield value  # the future the coroutine waits on, to the task
            except GeneratorExit:
                coro.close()
                raise
            except BaseException as exc:  # cancellation (the deadline) or an error for it
                try:
                    value = coro.throw(exc)
                except StopIteration as done:
                    return done.value
            else:
                try:
                    value = coro.send(sent)
                except StopIteration as done:
                    return done.value


if hasattr(asyncio, "timeout"):  # Python 3.11+: a timer on the current task, no new task
    _deadline = asyncio.timeout
else:  # pragma: no cover - Python 3.10

    @contextlib.asynccontextmanager
    async def _deadline(seconds: float) -> Any:
        loop = asyncio.get_running_loop()
        task = asyncio.current_task()
        expired = []

        def expire() -> None:
            expired.append(True)
            task.cancel()

        handle = loop.call_later(seconds, expire)
        try:
            yield
        except asyncio.CancelledError:
            if expired:
                raise asyncio.TimeoutError from None
            raise
        finally:
            handle.cancel()


_GUARD: Any = None


def _guard() -> Any:
    """The guard module (imported on first use: ``import nexus_lab`` stays light)."""
    global _GUARD
    if _GUARD is None:
        from . import guard

        _GUARD = guard
    return _GUARD


#: Agent attributes that change what a deployment shows (its description, MCP tool metadata).
_TOOL_METADATA = ("tool_description", "description", "tool_annotations", "tool_title", "__doc__")


def _check_provider(target: Any) -> None:
    """Refuse an agent whose ``config.llm_provider`` names no provider, at deploy time."""
    provider = getattr(getattr(target, "config", None), "llm_provider", None)
    if not isinstance(provider, str):
        return
    from ..providers import available_providers

    known = available_providers()
    if provider.strip().lower() not in known:
        raise ConfigError(
            f"config field 'llm_provider' is {provider!r}, which is no provider; "
            f"available: {', '.join(known)}",
            field="llm_provider",
        )


def _cache_key(name: str, target: Any) -> tuple | None:
    """Key of the deployment cache: the name plus what decides the compiled schema.

    Classes and functions are keyed by the objects themselves (not their names),
    so a class or function redefined in a notebook cell never reuses a stale
    schema; the cache holds them, so their ids cannot be reused either.
    """
    config = getattr(target, "config", None)
    fingerprint = getattr(config, "fingerprint", None)
    if callable(fingerprint):
        # what the tool shows is part of what is compiled: a changed description is a new entry
        shown = tuple(repr(getattr(target, attr, None)) for attr in _TOOL_METADATA)
        return (name, type(target), fingerprint(), shown)
    try:
        hash(target)
    except TypeError:
        return None
    return (name, type(target), target)
