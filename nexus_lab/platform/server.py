"""Run the API and MCP servers (uvicorn) on one background event loop.

The platform binds its sockets itself, so port ``0`` picks a free port and a
port in use fails at once with :class:`~nexus_lab.errors.PortInUseError`.
Both uvicorn servers then share one event loop in a daemon thread, which keeps
a notebook kernel free; :meth:`ServerGroup.stop` asks uvicorn to shut down
gracefully (in-flight requests finish) and joins the thread.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import os
import signal
import socket
import threading
import time
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

from ..errors import ConfigError, PortInUseError

if TYPE_CHECKING:
    from .app import Nexus

__all__ = ["Serving", "ServerGroup", "bind_socket", "inherited_sockets", "run_workers", "shutdown_signals"]

#: The channels a platform serves (the CLI is a client of the API).
_CHANNELS = ("api", "cli", "mcp")

logger = logging.getLogger("nexus_lab.server")


def bind_socket(host: str, port: int) -> socket.socket:
    """A listening TCP socket on ``host:port`` (``0`` = any free port)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    # IPPROTO_TCP explicitly: asyncio/uvloop only set TCP_NODELAY on accepted connections of a
    # socket marked TCP; without it every response waits ~40 ms for a delayed ACK.
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        if exc.errno in (errno.EADDRINUSE, errno.EACCES):
            raise PortInUseError(host, port) from exc
        raise OSError(f"cannot bind {host}:{port}: {exc.strerror or exc}") from exc
    sock.listen(2048)
    sock.setblocking(False)
    return sock


def _url(host: str, sock: socket.socket) -> str:
    port = sock.getsockname()[1]
    shown = f"[{host}]" if ":" in host else host
    if host in ("0.0.0.0", "::"):
        shown = "127.0.0.1"
    return f"http://{shown}:{port}"


def _new_loop() -> asyncio.AbstractEventLoop:
    """uvloop when installed (uvicorn[standard]): about 15% more throughput here."""
    try:
        import uvloop
    except ImportError:
        return asyncio.new_event_loop()
    return uvloop.new_event_loop()


class Serving:
    """Start, stop and wait for one :class:`~nexus_lab.Nexus`'s servers; the channels' state.

    ``Nexus.start/stop/wait/running`` are this class's methods; the platform
    itself keeps the registry, the execution path and health. A channel's state
    is ``registered`` (never started), ``serving``, ``stopped`` or ``failed``;
    ``serving`` is reported only while the server thread is alive and both
    uvicorn servers run, so a server that died says ``failed``.

    Example::

        serving = Serving(app)
        serving.start(block=False)
        serving.api_url          # 'http://127.0.0.1:8000'
        serving.stop()
    """

    def __init__(self, app: Nexus) -> None:
        self.app = app
        self._group: ServerGroup | None = None
        self._lock = threading.RLock()
        self._state = "registered"
        self._error: str | None = None

    @property
    def api_url(self) -> str | None:
        group = self._group
        return group.api_url if group is not None else None

    @property
    def mcp_url(self) -> str | None:
        group = self._group
        return group.mcp_url if group is not None else None

    @property
    def group(self) -> ServerGroup | None:
        """The running :class:`ServerGroup` (its sockets and uvicorn servers), if any."""
        return self._group

    @property
    def is_running(self) -> bool:
        return self.channel_state()[0] == "serving"

    def channel_state(self) -> tuple[str, str | None]:
        """``(state, error)`` as it is now: a serving group whose thread died is ``failed``."""
        group = self._group
        if self._state == "serving" and (group is None or not group.is_alive):
            reason = group.failure if group is not None else None
            return "failed", f"the server stopped unexpectedly{': ' + reason if reason else ''}"
        return self._state, self._error

    def start(self, block: bool = True, *, sockets: tuple[socket.socket, socket.socket] | None = None) -> None:
        """Serve; ``sockets`` are listening (API, MCP) sockets to serve on instead of binding
        (a worker process of :func:`run_workers` inherits them from its supervisor)."""
        with self._lock:
            if self._group is not None and self._group.is_running:
                if block:
                    raise RuntimeError("the platform is already running; call stop() first")
                return
            group = ServerGroup(self.app, sockets=sockets)
            self._group = group
        try:
            group.start()
        except BaseException as exc:
            self._state, self._error = "failed", str(exc)
            self._group = None
            raise
        self._state, self._error = "serving", None
        if block:
            self.wait()

    def wait(self, stop: threading.Event | None = None) -> None:
        group = self._group
        try:
            if group is not None:
                group.wait(stop)
        finally:
            self.stop()

    def stop(self) -> None:
        with self._lock:
            group, self._group = self._group, None
        if group is not None:
            group.stop()
            self._state, self._error = "stopped", None


class ServerGroup:
    """The running servers of one :class:`~nexus_lab.Nexus`."""

    def __init__(
        self,
        app: Nexus,
        *,
        log_level: str = "warning",
        startup_timeout: float = 30.0,
        sockets: tuple[socket.socket, socket.socket] | None = None,
    ) -> None:
        self.app = app
        self._given_sockets = sockets
        self.log_level = log_level
        self.startup_timeout = startup_timeout
        self.api_url: str | None = None
        self.mcp_url: str | None = None
        self._servers: list[Any] = []
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._error: BaseException | None = None
        self._stopped = threading.Event()

    @property
    def is_running(self) -> bool:
        return self._thread is not None and self._thread.is_alive() and not self._stopped.is_set()

    @property
    def is_alive(self) -> bool:
        """Both uvicorn servers are up and their thread runs (what ``serving`` means)."""
        return (
            self.is_running
            and self._error is None
            and all(s.started and not s.should_exit for s, _ in self._servers)
        )

    @property
    def failure(self) -> str | None:
        """Why the servers ended, if they ended with an error."""
        return None if self._error is None else f"{type(self._error).__name__}: {self._error}"

    def start(self) -> None:
        try:
            import uvicorn

            from .guard import uvicorn_options
            from .http import build_api_app
            from .mcp import build_mcp_app
        except ModuleNotFoundError as exc:
            raise ConfigError(
                f"serving needs the server extras, which are not installed (missing module "
                f"{exc.name!r}): pip install 'nexus-lab[server]'",
                field="server",
            ) from exc

        app = self.app
        if self._given_sockets is not None:
            api_sock, mcp_sock = self._given_sockets
        else:
            api_sock = bind_socket(app.host, app.api_port)
            try:
                mcp_sock = bind_socket(app.host, app.mcp_port)
            except BaseException:
                api_sock.close()
                raise
        self.api_url = _url(app.host, api_sock)
        self.mcp_url = _url(app.host, mcp_sock) + "/mcp"
        try:  # a bad HTTP option (ConfigError) must not leave the ports bound
            pairs = [(build_api_app(app), api_sock, False), (build_mcp_app(app), mcp_sock, True)]
        except BaseException:
            if self._given_sockets is None:
                api_sock.close()
                mcp_sock.close()
            raise
        for asgi, sock, jsonrpc in pairs:
            config = uvicorn.Config(
                asgi,
                log_level=self.log_level,
                lifespan="on",
                access_log=False,
                timeout_graceful_shutdown=10,
                server_header=False,
                # what one client may hold: header size, read and keep-alive deadlines, the
                # connection cap, forwarded headers only from configured proxies (guard.py)
                **uvicorn_options(app, jsonrpc_errors=jsonrpc),
            )
            server = uvicorn.Server(config)
            server.install_signal_handlers = lambda: None  # type: ignore[method-assign]  # the owner handles signals
            self._servers.append((server, sock))
        self._thread = threading.Thread(target=self._run, name="nexus-servers", daemon=True)
        self._thread.start()
        deadline = time.monotonic() + self.startup_timeout
        while time.monotonic() < deadline:
            if self._error is not None or not self._thread.is_alive():
                self.stop()
                raise RuntimeError(f"the platform failed to start: {self._error}") from self._error
            if all(s.started for s, _ in self._servers):
                logger.info("nexus_lab serving API at %s and MCP at %s", self.api_url, self.mcp_url)
                return
            time.sleep(0.005)
        self.stop()
        raise TimeoutError(f"the platform did not start within {self.startup_timeout} s")

    def _run(self) -> None:
        loop = _new_loop()
        self._loop = loop
        asyncio.set_event_loop(loop)

        async def serve_all() -> None:
            await asyncio.gather(*(s.serve(sockets=[sock]) for s, sock in self._servers))

        try:
            loop.run_until_complete(serve_all())
        except BaseException as exc:  # reported to start() / logged
            self._error = exc
            logger.exception("nexus_lab servers stopped with an error")
        finally:
            for _, sock in self._servers:
                try:
                    sock.close()
                except OSError:
                    pass
            try:
                loop.run_until_complete(loop.shutdown_asyncgens())
            finally:
                loop.close()
                self._stopped.set()

    def stop(self, timeout: float = 15.0) -> None:
        """Graceful shutdown: stop accepting, let in-flight requests finish, join the thread."""
        for server, _ in self._servers:
            server.should_exit = True
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(timeout)
            if self._thread.is_alive():
                for server, _ in self._servers:
                    server.force_exit = True
                self._thread.join(5)
        self._stopped.set()

    def wait(self, stop: threading.Event | None = None) -> None:
        """Block until Ctrl-C, SIGTERM, ``stop`` is set, or the servers end."""
        if stop is None:
            with shutdown_signals() as event:
                return self.wait(event)
        try:
            while not stop.wait(0.2) and not self._stopped.is_set():
                pass
        except KeyboardInterrupt:
            pass
        return None


@contextlib.contextmanager
def shutdown_signals() -> Iterator[threading.Event]:
    """Turn SIGINT/SIGTERM into an event while the block runs (main thread only).

    Install it before a slow start-up so that a signal arriving meanwhile is
    not lost (a background process starts with SIGINT ignored) and stops the
    platform as soon as it is up. A second signal raises KeyboardInterrupt,
    to get out of a start-up that hangs. Elsewhere than the main thread it
    installs nothing and the event is only set by the caller.

    Example::

        with shutdown_signals() as stop:
            app.start(block=False)
            print(app.api_url)
            app.wait(stop)
    """
    stop = threading.Event()
    previous: dict[int, Any] = {}

    def _handler(signum: int, frame: Any) -> None:  # noqa: ARG001
        if stop.is_set():
            raise KeyboardInterrupt
        logger.info("received signal %s, shutting down", signum)
        stop.set()

    if threading.current_thread() is threading.main_thread():
        for sig in (signal.SIGINT, signal.SIGTERM):
            previous[sig] = signal.signal(sig, _handler)
    try:
        yield stop
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


# ----------------------------------------------------------------------------- several workers
#: Environment variable through which a supervisor hands its listening sockets to a worker.
SOCKETS_ENV = "NEXUS_INHERITED_SOCKETS"


def inherited_sockets() -> tuple[socket.socket, socket.socket] | None:
    """The (API, MCP) listening sockets a :func:`run_workers` supervisor passed down, if any."""
    value = os.environ.get(SOCKETS_ENV)
    if not value:
        return None
    try:
        api_fd, mcp_fd = (int(part) for part in value.split(","))
    except ValueError:
        raise ConfigError(f"{SOCKETS_ENV} must be 'API_FD,MCP_FD', got {value!r}", field=SOCKETS_ENV) from None
    socks = []
    for fd in (api_fd, mcp_fd):
        sock = socket.socket(fileno=fd)
        sock.setblocking(False)
        socks.append(sock)
    return socks[0], socks[1]


#: Young-generation collection threshold of a serving process (CPython's default: 700).
SERVING_GC_THRESHOLD = 7000


def tune_gc_for_serving() -> tuple[int, int, int]:
    """Set the garbage collector up for a process that does nothing but serve (``nexus serve``).

    * ``gc.freeze()``: what loading the app built lives as long as the process, so
      full collections stop scanning it again and again;
    * the young-generation threshold goes from 700 to :data:`SERVING_GC_THRESHOLD`
      allocations: with 32 requests waiting on a store at once (Redis), each keeps its
      objects alive while the others allocate, and at 700 the collector ran about two
      thousand times in a four-second run; at 7000 a tenth as often, each pass over
      about as many live objects. The garbage left between two passes is what a few
      thousand allocations hold: bounded and short-lived.

    Measured (``benchmarks/bench_scale.py``, one worker, sessions and the rate limit
    in Redis, same run): 0.288x bare with CPython's defaults, 0.343x with these
    settings. ``app.start()`` in a notebook does not call this: it would change the
    user's whole kernel. Returns the thresholds now in force.

    Example::

        tune_gc_for_serving()   # (7000, 10, 10)
    """
    import gc

    gc.collect()
    gc.freeze()
    gen0, gen1, gen2 = gc.get_threshold()
    gc.set_threshold(max(gen0, SERVING_GC_THRESHOLD), gen1, gen2)
    return gc.get_threshold()


def run_workers(
    worker_argv: list[str],
    workers: int,
    host: str,
    api_port: int,
    mcp_port: int,
    *,
    stop: threading.Event,
    announce: Any = print,
    max_restarts: int = 10,
) -> int:
    """Serve with ``workers`` processes sharing one pair of listening sockets (pre-fork style).

    This process binds the API and MCP sockets once and starts ``workers`` copies of
    ``worker_argv`` (a ``nexus serve`` command line) that inherit them; the kernel
    spreads connections over the workers. MCP runs stateless, so any worker answers
    any request; sessions and rate limits must live in a shared store (Redis). A
    worker that dies is started again (at most ``max_restarts`` times in all); on
    ``stop`` (SIGINT/SIGTERM) every worker gets SIGTERM and finishes its in-flight
    requests. Returns the exit code.

    Example::

        with shutdown_signals() as stop:
            run_workers(["nexus", "serve", "app.py:app", "--sessions", url], 4,
                        "127.0.0.1", 8000, 3001, stop=stop)
    """
    import subprocess

    api_sock = bind_socket(host, api_port)
    try:
        mcp_sock = bind_socket(host, mcp_port)
    except BaseException:
        api_sock.close()
        raise
    fds = (api_sock.fileno(), mcp_sock.fileno())
    env = dict(os.environ, **{SOCKETS_ENV: f"{fds[0]},{fds[1]}"})

    def spawn() -> subprocess.Popen:
        return subprocess.Popen(worker_argv, pass_fds=fds, env=env)

    procs = [spawn() for _ in range(workers)]
    announce(f"API: {_url(host, api_sock)}")
    announce(f"MCP: {_url(host, mcp_sock)}/mcp")
    announce(f"workers: {workers} (pids {', '.join(str(p.pid) for p in procs)})")
    restarts = 0
    code = 0
    try:
        while not stop.wait(0.2):
            for i, proc in enumerate(procs):
                if proc.poll() is None:
                    continue
                if restarts >= max_restarts:
                    logger.error("worker %s exited with %s; too many restarts, stopping", proc.pid, proc.returncode)
                    code = 1
                    stop.set()
                    break
                restarts += 1
                logger.warning("worker %s exited with %s; starting another", proc.pid, proc.returncode)
                procs[i] = spawn()
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for proc in procs:
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        api_sock.close()
        mcp_sock.close()
    return code
