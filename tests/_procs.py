"""Real processes for the scale-out tests and ``benchmarks/bench_scale.py``.

* :class:`RedisProcess` - ``redis-server`` on a free loopback port with its own
  temp dir (AOF and/or RDB), stopped (SIGTERM: a clean shutdown), killed (-9)
  and started again on the same port with the same data.
* :class:`NginxProcess` - the Debian ``nginx`` in front of several hosts, its
  config rendered from ``tests/nginx.conf.template`` (the config that
  ``docs/operations.md`` shows), run in the foreground with every path in a
  temp dir, so it needs no root.
* :class:`NexusServe` - a ``nexus serve`` subprocess on free ports (one worker,
  or a supervisor with ``--workers N``).
* :func:`scale_app` - the app those hosts serve: the production configuration
  (API-key auth, a rate limit, monitoring), ``echo`` deployed with sessions and
  ``whoami`` without; both answer with the pid of the process that ran them.

Every wait is on a condition (a line a process prints, a connection accepted,
a PING answered) with a deadline; no sleeps. Each process runs in its own
process group, and ``close()`` (also on ``with`` exit) ends the group, so
nothing outlives a test even when it fails; every object here is only ever
stopped by the pid it started.

Only the standard library at module level: ``nexus serve`` loads this file as
the app (``tests/_procs.py:scale_app``).
"""

from __future__ import annotations

import collections
import contextlib
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
NGINX_TEMPLATE = Path(__file__).with_name("nginx.conf.template")
#: APP_REF of :func:`scale_app`, for ``nexus serve``.
SCALE_APP = f"{Path(__file__).resolve()}:scale_app"
#: The API key :func:`scale_app` accepts (principal ``scale``).
API_KEY = "scale-test-key-0123456789"
#: Environment variable giving :func:`scale_app`'s rate limit (requests per minute).
RATE_ENV = "NEXUS_SCALE_RATE_LIMIT"

__all__ = [
    "API_KEY",
    "ChildProcess",
    "NGINX_TEMPLATE",
    "RATE_ENV",
    "SCALE_APP",
    "NexusServe",
    "NginxProcess",
    "ProcessError",
    "RedisProcess",
    "find_binary",
    "free_port",
    "nexus_env",
    "render_nginx_conf",
    "rss_kib",
    "run_nexus",
    "scale_app",
]


# ----------------------------------------------------------------------------- the app
async def echo(query: str) -> dict:
    """Answers the query, with the pid of the worker that ran it (deployed with sessions)."""
    return {"response": query, "pid": os.getpid()}


def whoami() -> dict:
    """The pid of the worker that ran the call (no session), and its collector settings."""
    import gc

    return {"pid": os.getpid(), "gc_threshold": gc.get_threshold()[0],
            "gc_frozen": gc.get_freeze_count()}


def scale_app() -> Any:
    """The production configuration: auth, monitoring, ``$NEXUS_SCALE_RATE_LIMIT``/min.

    Its sessions are in memory until ``nexus serve --sessions URL`` replaces them.
    """
    from nexus_lab import Nexus, NexusSessionManager, deploy_multi_channel, deploy_with_sessions

    rate = int(os.environ.get(RATE_ENV) or 0) or None
    app = Nexus(
        auto_discovery=False,
        api_port=0,
        mcp_port=0,
        enable_auth=True,
        api_keys={API_KEY: "scale"},
        rate_limit=rate,
        enable_monitoring=True,
    )
    manager = NexusSessionManager(cleanup_interval=300, session_ttl=3600)
    deploy_with_sessions(echo, app, "echo", manager)
    deploy_multi_channel(whoami, app, "whoami")
    return app


# ----------------------------------------------------------------------------- helpers
class ProcessError(RuntimeError):
    """A process did not start, or did not reach the state waited for; the message holds its output."""


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port the OS says is free now (bind to 0, read it, release it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def find_binary(name: str) -> str | None:
    """``name`` on PATH, else in the sbin directories Debian installs daemons to (nginx)."""
    found = shutil.which(name)
    if found:
        return found
    for folder in ("/usr/sbin", "/usr/local/sbin", "/sbin"):
        path = Path(folder) / name
        if path.is_file() and os.access(path, os.X_OK):
            return str(path)
    return None


def accepts(host: str, port: int, timeout: float = 1.0) -> bool:
    """True when ``host:port`` accepts a TCP connection now."""
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def nexus_env(**extra: str) -> dict[str, str]:
    """This environment without NEXUS_* variables (none leaks into a server), plus ``extra``."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("NEXUS_")}
    env["PYTHONUNBUFFERED"] = "1"
    env.update(extra)
    return env


def rss_kib(pid: int) -> int | None:
    """Resident set size of ``pid`` in KiB (``VmRSS``), None when it is gone."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    except OSError:
        return None
    return None


class _Lines:
    """Lines a process writes to one pipe, read by a daemon thread; waited on by condition."""

    def __init__(self, stream: Any, name: str, keep: int = 4000) -> None:
        self.name = name
        self.lines: collections.deque[str] = collections.deque(maxlen=keep)
        self.count = 0
        self.closed = False
        self._cond = threading.Condition()
        self._thread = threading.Thread(target=self._read, args=(stream,), daemon=True,
                                        name=f"lines-{name}")
        self._thread.start()

    def _read(self, stream: Any) -> None:
        try:
            for line in stream:
                with self._cond:
                    self.lines.append(line.rstrip("\n"))
                    self.count += 1
                    self._cond.notify_all()
        except (OSError, ValueError):
            pass
        finally:
            with self._cond:
                self.closed = True
                self._cond.notify_all()
            with contextlib.suppress(OSError, ValueError):
                stream.close()

    def wait(self, predicate: Callable[[list[str]], Any], deadline: float) -> Any:
        """The first truthy ``predicate(lines)``; None once the pipe closed or the deadline passed."""
        with self._cond:
            while True:
                found = predicate(list(self.lines))
                if found or self.closed:
                    return found
                left = deadline - time.monotonic()
                if left <= 0:
                    return None
                self._cond.wait(left)

    def tail(self, n: int = 40) -> str:
        with self._cond:
            return "\n".join(list(self.lines)[-n:])

    def join(self, timeout: float = 5.0) -> None:
        self._thread.join(timeout)


class ChildProcess:
    """A child process in its own process group, its stdout and stderr read by threads."""

    name = "process"

    def __init__(self) -> None:
        self.proc: subprocess.Popen | None = None
        self.out: _Lines | None = None
        self.err: _Lines | None = None

    def _spawn(self, argv: Sequence[str], *, env: dict[str, str] | None = None,
               cwd: str | Path | None = None) -> None:
        self.proc = subprocess.Popen(
            list(argv), stdout=subprocess.PIPE, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL,
            text=True, bufsize=1, env=env, cwd=cwd, start_new_session=True,
        )
        self.out = _Lines(self.proc.stdout, f"{self.name}-out")
        self.err = _Lines(self.proc.stderr, f"{self.name}-err")

    @property
    def pid(self) -> int:
        assert self.proc is not None, f"{self.name} was never started"
        return self.proc.pid

    @property
    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def output(self) -> str:
        """The last lines of stdout and stderr, for failure messages."""
        parts = []
        if self.out is not None:
            parts.append(f"--- {self.name} stdout ---\n{self.out.tail()}")
        if self.err is not None:
            parts.append(f"--- {self.name} stderr ---\n{self.err.tail()}")
        return "\n".join(parts)

    def _fail(self, what: str) -> ProcessError:
        code = self.proc.poll() if self.proc is not None else None
        state = f"exited with {code}" if code is not None else "still running"
        return ProcessError(f"{self.name} {what} ({state})\n{self.output()}")

    def _wait_line(self, stream: _Lines, pattern: str, deadline: float) -> re.Match:
        rx = re.compile(pattern)

        def seen(lines: list[str]) -> re.Match | None:
            for line in lines:
                m = rx.search(line)
                if m:
                    return m
            return None

        found = stream.wait(seen, deadline)
        if found is None:
            raise self._fail(f"printed no line matching {pattern!r}")
        return found

    def _reap(self, timeout: float) -> None:
        assert self.proc is not None
        self.proc.wait(timeout)

    def kill(self) -> None:
        """``kill -9`` of the process (only it: a supervisor's workers live on, as they would)."""
        if self.alive:
            self.proc.send_signal(signal.SIGKILL)
            self._reap(30)

    def terminate(self, timeout: float = 30.0) -> int | None:
        """SIGTERM and wait for a clean exit (SIGKILL to the group past ``timeout``); the exit code."""
        if self.proc is None:
            return None
        if self.alive:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self._reap(timeout)
            except subprocess.TimeoutExpired:
                self._kill_group()
                self._reap(30)
        return self.proc.returncode

    def _kill_group(self) -> None:
        """SIGKILL to the process group this object started (its children included)."""
        if self.proc is None:
            return
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.proc.pid, signal.SIGKILL)

    def close(self) -> None:
        """Stop everything this object started; safe to call twice, and after a failure."""
        if self.proc is None:
            return
        if self.alive:
            self.terminate(15)
        self._kill_group()  # children of a killed supervisor (its workers), if any
        for lines in (self.out, self.err):
            if lines is not None:
                lines.join(5)  # the pipes close once the last process holding them is gone

    def __enter__(self) -> Any:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


# ----------------------------------------------------------------------------- redis-server
class RedisProcess(ChildProcess):
    """``redis-server`` on a free loopback port, its data in a temp dir of its own.

    ``appendonly``: the AOF (``appendfsync`` ``everysec`` by default, ``always``
    to lose no acknowledged write on a crash); ``save``: RDB snapshot points
    (``""`` for none, Redis' defaults with ``"3600 1 300 100 60 10000"``);
    ``args``: more server options (later ones win, so they may override these);
    ``password``: ``requirepass``, also put in :attr:`url`.
    ``stop()`` is a clean shutdown (the AOF is flushed and fsynced, an RDB is
    written when save points are set), ``kill()`` is a crash, and ``start()``
    again serves the same port and dir with the data kept.

    Example::

        with RedisProcess() as redis:
            redis.start()
            redis.url               # 'redis://127.0.0.1:PORT/0'
            redis.stop(); redis.start()
    """

    name = "redis-server"

    def __init__(self, *, appendonly: bool = True, appendfsync: str = "everysec", save: str = "",
                 binary: str | None = None, args: Sequence[str] = (),
                 password: str | None = None) -> None:
        super().__init__()
        self.binary = binary or find_binary("redis-server")
        if self.binary is None:
            raise ProcessError("redis-server is not installed (apt-get install redis-server)")
        self.appendonly = appendonly
        self.appendfsync = appendfsync
        self.save = save
        self.args = list(args)
        self.password = password
        self.dir = Path(tempfile.mkdtemp(prefix="nexus-redis-"))
        self.port = free_port()
        self.starts = 0

    @property
    def url(self) -> str:
        auth = f":{self.password}@" if self.password else ""
        return f"redis://{auth}127.0.0.1:{self.port}/0"

    def client(self, **kwargs: Any) -> Any:
        """A redis-py client of this server (``decode_responses`` on by default)."""
        import redis

        kwargs.setdefault("decode_responses", True)
        kwargs.setdefault("socket_timeout", 10)
        return redis.Redis.from_url(self.url, **kwargs)

    def argv(self) -> list[str]:
        return [
            self.binary, "--port", str(self.port), "--bind", "127.0.0.1", "--dir", str(self.dir),
            "--daemonize", "no", "--logfile", "", "--loglevel", "notice",
            "--appendonly", "yes" if self.appendonly else "no", "--appendfsync", self.appendfsync,
            "--save", self.save, "--dbfilename", "dump.rdb",
            *(["--requirepass", self.password] if self.password else []),
            *self.args,
        ]

    def start(self, timeout: float = 30.0) -> RedisProcess:
        """Start (again: on the same port, with the same data dir); returns once it answers."""
        if self.alive:
            raise ProcessError(f"redis-server is already running on port {self.port}")
        deadline = time.monotonic() + timeout
        for _ in range(10):
            self._spawn(self.argv())
            try:
                # printed once the data (AOF or RDB) is loaded and the port listens
                self._wait_line(self.out, r"Ready to accept connections", deadline)
                break
            except ProcessError:
                taken = "Address already in use" in self.output()
                self.close_process()
                if not taken or self.starts:  # a restart keeps its port: no other try
                    raise
                self.port = free_port()  # taken between choosing it and starting: another
        else:
            raise ProcessError("redis-server found no free port in 10 tries")
        self.starts += 1
        if not self.ping():
            raise self._fail("said it was ready but does not answer PING")
        return self

    def close_process(self) -> None:
        """Reap a server that failed to start (its data dir stays)."""
        if self.proc is not None:
            super().close()

    def _command(self, command: bytes, timeout: float) -> socket.socket:
        s = socket.create_connection(("127.0.0.1", self.port), timeout=timeout)
        if self.password:
            s.sendall(b"AUTH %s\r\n" % self.password.encode())
            if not s.recv(64).startswith(b"+OK"):
                s.close()
                raise ProcessError("redis-server refused the password")
        s.sendall(command)
        return s

    def ping(self, timeout: float = 2.0) -> bool:
        """True when the server answers ``PING`` with ``+PONG`` now."""
        try:
            with self._command(b"PING\r\n", timeout) as s:
                return s.recv(64).startswith(b"+PONG")
        except (OSError, ProcessError):
            return False

    def info(self, section: str = "persistence", timeout: float = 5.0) -> dict[str, str]:
        """``INFO section`` as ``{field: value}`` (e.g. ``aof_buffer_length``)."""
        with self._command(f"INFO {section}\r\n".encode(), timeout) as s:
            data = b""
            while b"\r\n" not in data:
                data += s.recv(65536) or b"\r\n"
            head, _, body = data.partition(b"\r\n")
            if not head.startswith(b"$"):
                raise ProcessError(f"redis-server answered INFO with {head!r}")
            size = int(head[1:])
            while len(body) < size:
                chunk = s.recv(65536)
                if not chunk:
                    break
                body += chunk
        pairs = (line.split(":", 1) for line in body[:size].decode().splitlines() if ":" in line)
        return {k: v for k, v in pairs}

    def stop(self, timeout: float = 30.0) -> int | None:
        """A clean shutdown (SIGTERM): the AOF is fsynced and an RDB saved when configured."""
        code = self.terminate(timeout)
        if code not in (0, None):
            raise self._fail(f"did not shut down cleanly (exit {code})")
        return code

    def pause(self) -> None:
        """SIGSTOP: Redis hangs (connections are accepted by the kernel, nothing answers)."""
        self.proc.send_signal(signal.SIGSTOP)

    def resume(self) -> None:
        """SIGCONT after :meth:`pause`."""
        self.proc.send_signal(signal.SIGCONT)

    def restart(self, timeout: float = 30.0) -> RedisProcess:
        self.stop()
        return self.start(timeout)

    def close(self) -> None:
        try:
            if self.alive:
                self.resume()  # a paused server would not act on SIGTERM
            super().close()
        finally:
            shutil.rmtree(self.dir, ignore_errors=True)


# ----------------------------------------------------------------------------- nginx
def render_nginx_conf(api_upstreams: Iterable[str], mcp_upstreams: Iterable[str],
                      api_listen: str, mcp_listen: str, template: str | None = None) -> str:
    """``tests/nginx.conf.template`` filled in: a line holding ``{{api_server}}`` (or
    ``{{mcp_server}}``) is repeated once per ``host:port``; ``{{api_listen}}`` and
    ``{{mcp_listen}}`` are the addresses nginx listens on."""
    text = NGINX_TEMPLATE.read_text() if template is None else template
    lists = {"{{api_server}}": list(api_upstreams), "{{mcp_server}}": list(mcp_upstreams)}
    out: list[str] = []
    for line in text.splitlines():
        for mark, addresses in lists.items():
            if mark in line and not line.lstrip().startswith("#"):
                if not addresses:
                    raise ValueError(f"no address for {mark}")
                out.extend(line.replace(mark, addr) for addr in addresses)
                break
        else:
            out.append(line)
    conf = "\n".join(out) + "\n"
    conf = conf.replace("{{api_listen}}", api_listen).replace("{{mcp_listen}}", mcp_listen)
    left = re.findall(r"\{\{\w+\}\}", "\n".join(
        ln for ln in conf.splitlines() if not ln.lstrip().startswith("#")))
    if left:
        raise ValueError(f"placeholders left in the nginx config: {left}")
    return conf


class NginxProcess(ChildProcess):
    """nginx load-balancing the API and MCP of several hosts, on two free loopback ports.

    Example::

        with NginxProcess(["127.0.0.1:8001", "127.0.0.1:8002"],
                          ["127.0.0.1:3001", "127.0.0.1:3002"]) as lb:
            lb.start()
            lb.api_url, lb.mcp_url      # 'http://127.0.0.1:PORT', 'http://127.0.0.1:PORT/mcp'
    """

    name = "nginx"

    def __init__(self, api_upstreams: Sequence[str], mcp_upstreams: Sequence[str],
                 *, binary: str | None = None) -> None:
        super().__init__()
        self.binary = binary or find_binary("nginx")
        if self.binary is None:
            raise ProcessError("nginx is not installed (apt-get install nginx)")
        self.api_upstreams = list(api_upstreams)
        self.mcp_upstreams = list(mcp_upstreams)
        self.dir = Path(tempfile.mkdtemp(prefix="nexus-nginx-"))
        # nginx started by root runs its workers as nobody: they must reach the temp paths
        self.dir.chmod(0o755)
        (self.dir / "temp").mkdir()
        self.api_port = free_port()
        self.mcp_port = free_port()
        self.conf = self.dir / "nginx.conf"

    @property
    def api_url(self) -> str:
        return f"http://127.0.0.1:{self.api_port}"

    @property
    def mcp_url(self) -> str:
        return f"http://127.0.0.1:{self.mcp_port}/mcp"

    def argv(self) -> list[str]:
        return [
            self.binary, "-p", f"{self.dir}/", "-c", str(self.conf), "-e", "stderr",
            "-g", f"daemon off; pid {self.dir}/nginx.pid; error_log stderr notice;",
        ]

    def start(self, timeout: float = 30.0) -> NginxProcess:
        self.conf.write_text(render_nginx_conf(
            self.api_upstreams, self.mcp_upstreams,
            f"127.0.0.1:{self.api_port}", f"127.0.0.1:{self.mcp_port}"))
        self._spawn(self.argv())
        deadline = time.monotonic() + timeout
        # the master binds the listening sockets before it starts a worker
        self._wait_line(self.err, r"start worker process", deadline)
        for port in (self.api_port, self.mcp_port):
            if not accepts("127.0.0.1", port):
                raise self._fail(f"started but does not accept connections on port {port}")
        return self

    def close(self) -> None:
        try:
            super().close()  # SIGTERM: nginx' fast shutdown; the group kill ends its worker
        finally:
            shutil.rmtree(self.dir, ignore_errors=True)


# ----------------------------------------------------------------------------- nexus serve
class NexusServe(ChildProcess):
    """``nexus serve APP_REF`` on free ports (``--workers N``: a supervisor and N workers).

    Example::

        with NexusServe(sessions=redis.url, rate_limit_store=redis.url, rate_limit=1000) as host:
            host.start()
            host.api_url, host.mcp_url, host.worker_pids
    """

    name = "nexus serve"

    def __init__(self, app_ref: str = SCALE_APP, *, sessions: str | None = None,
                 rate_limit_store: str | None = None, rate_limit: int | None = None,
                 workers: int = 1, extra_args: Sequence[str] = (),
                 env: dict[str, str] | None = None, log_level: str = "warning") -> None:
        super().__init__()
        self.app_ref = app_ref
        self.sessions = sessions
        self.rate_limit_store = rate_limit_store
        self.rate_limit = rate_limit
        self.workers = workers
        self.extra_args = list(extra_args)
        self.env = env
        self.log_level = log_level
        self.api_url: str | None = None
        self.mcp_url: str | None = None
        self.worker_pids: list[int] = []

    def argv(self) -> list[str]:
        argv = [sys.executable, "-m", "nexus_lab.cli", "serve", self.app_ref,
                "--api-port", "0", "--mcp-port", "0", "--log-level", self.log_level]
        if self.sessions:
            argv += ["--sessions", self.sessions]
        if self.rate_limit_store:
            argv += ["--rate-limit-store", self.rate_limit_store]
        if self.workers != 1:
            argv += ["--workers", str(self.workers)]
        return argv + self.extra_args

    def environment(self) -> dict[str, str]:
        extra = {RATE_ENV: str(self.rate_limit)} if self.rate_limit else {}
        return nexus_env(**extra, **(self.env or {}))

    @property
    def api_addr(self) -> str:
        """``host:port`` of the API (an nginx upstream line)."""
        assert self.api_url is not None
        return self.api_url.split("://", 1)[1]

    @property
    def mcp_addr(self) -> str:
        assert self.mcp_url is not None
        return self.mcp_url.split("://", 1)[1].split("/", 1)[0]

    def start(self, timeout: float = 90.0) -> NexusServe:
        """Launch and wait until it serves (see :meth:`launch` to start several at once)."""
        return self.launch().ready(timeout)

    def launch(self) -> NexusServe:
        """Start the process without waiting; :meth:`ready` waits."""
        self._spawn(self.argv(), env=self.environment(), cwd=REPO)
        return self

    def ready(self, timeout: float = 90.0) -> NexusServe:
        """Wait for the ``API:``/``MCP:`` lines (and, with workers, every worker's line)."""
        deadline = time.monotonic() + timeout
        self.api_url = self._wait_line(self.out, r"^API: (\S+)", deadline).group(1)
        self.mcp_url = self._wait_line(self.out, r"^MCP: (\S+)", deadline).group(1)
        if self.workers == 1:
            self.worker_pids = [self.pid]
            return self
        # each worker prints this once it serves (the supervisor's sockets queue until then)
        rx = re.compile(r"^worker (\d+) serving")

        def all_serving(lines: list[str]) -> list[int] | None:
            pids = [int(m.group(1)) for m in map(rx.match, lines) if m]
            return pids if len(pids) >= self.workers else None

        pids = self.out.wait(all_serving, deadline)
        if not pids:
            raise self._fail(f"did not get {self.workers} workers serving")
        self.worker_pids = pids[: self.workers]
        return self


def run_nexus(*args: str, env: dict[str, str] | None = None,
              timeout: float = 90.0) -> subprocess.CompletedProcess:
    """``python -m nexus_lab.cli ARGS`` to completion (the CLI, as a user runs it)."""
    return subprocess.run(
        [sys.executable, "-m", "nexus_lab.cli", *args], capture_output=True, text=True,
        env=env or nexus_env(), cwd=REPO, timeout=timeout, stdin=subprocess.DEVNULL,
    )
