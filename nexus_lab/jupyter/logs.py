"""Server-side log records, kept in the kernel instead of printed under a random cell.

The platform logs an agent failure (with its traceback and an error id) on the
``nexus_lab`` logger, from the server thread. In a notebook, anything such a
thread writes to stderr lands under whichever cell happens to be running or
ran last, so a failing request made from *outside* the kernel (curl, another
process) prints a traceback under an unrelated cell.

:class:`LogCapture` is a ``logging.Handler`` on the ``nexus_lab`` logger,
installed by ``%load_ext nexus_lab`` (and by the dashboard): it keeps the last
:data:`MAX_RECORDS` records in memory - level, logger, message, error id and
the formatted traceback - and stops them from reaching stderr (the logger's
``propagate`` is turned off while installed; :meth:`LogCapture.uninstall`
restores it). Read them with ``%nexus logs``, the dashboard's *Server log* tab,
or ``%nexus last-error`` (which looks the traceback up by error id).

Example::

    from nexus_lab.jupyter.logs import capture

    logs = capture()                  # the kernel's one capture, installed
    logs.records(level="ERROR")[-1]   # LogEntry(level='ERROR', logger='nexus_lab', ...)
    logs.traceback_for("3f2a9c81d0e4")
"""

from __future__ import annotations

import collections
import logging
import re
import threading
from dataclasses import dataclass
from typing import Any

__all__ = ["LogEntry", "LogCapture", "capture", "MAX_RECORDS", "CAPTURED_LOGGERS"]

#: Records kept (the oldest are dropped first).
MAX_RECORDS = 1000
#: Loggers whose records are captured: the platform's (``nexus_lab.http``, ``.mcp``, ``.server`` ...).
CAPTURED_LOGGERS = ("nexus_lab",)

_ERROR_ID = re.compile(r"error id ([0-9A-Za-z]{6,})")


@dataclass(frozen=True)
class LogEntry:
    """One captured log record.

    Attributes: ``created`` (``time.time()``), ``level`` (``"ERROR"``...),
    ``levelno``, ``logger``, ``message``, ``error_id`` (when the message names
    one), ``traceback`` (the formatted exception, or ``None``), ``thread``.
    """

    created: float
    level: str
    levelno: int
    logger: str
    message: str
    error_id: str | None = None
    traceback: str | None = None
    thread: str = ""

    def __repr__(self) -> str:  # no timestamp: stable in notebook outputs
        eid = f", error_id={self.error_id!r}" if self.error_id else ""
        return f"LogEntry(level={self.level!r}, logger={self.logger!r}, message={self.message!r}{eid})"


class LogCapture(logging.Handler):
    """Keep the records of :data:`CAPTURED_LOGGERS` in memory instead of printing them.

    ``version`` grows with every record, so views poll it cheaply.
    """

    def __init__(self, max_records: int = MAX_RECORDS) -> None:
        super().__init__(level=logging.DEBUG)
        self._entries: collections.deque[LogEntry] = collections.deque(maxlen=max_records)
        self._formatter = logging.Formatter()
        # logger name -> (propagate, level) before install, restored by uninstall()
        self._installed: dict[str, tuple[bool, int]] = {}
        self._users = 0  # install() calls not yet matched by uninstall()
        self._guard = threading.Lock()
        self.version = 0

    # -- logging.Handler --------------------------------------------------------------
    def emit(self, record: logging.LogRecord) -> None:
        try:
            message = record.getMessage()
            tb = None
            if record.exc_info and record.exc_info[0] is not None:
                # formatted now: keeping exc_info would keep every frame (and its locals) alive
                tb = self._formatter.formatException(record.exc_info)
            found = _ERROR_ID.search(message)
            entry = LogEntry(
                created=record.created,
                level=record.levelname,
                levelno=record.levelno,
                logger=record.name,
                message=message,
                error_id=found.group(1) if found else None,
                traceback=tb,
                thread=record.threadName or "",
            )
        except Exception:  # a logging handler must never raise into the platform
            self.handleError(record)
            return
        with self._guard:
            self._entries.append(entry)
            self.version += 1

    # -- install ---------------------------------------------------------------------
    @property
    def installed(self) -> bool:
        return bool(self._installed)

    def install(self) -> LogCapture:
        """Attach to the captured loggers and stop their records reaching stderr.

        Counted: each ``install()`` needs its ``uninstall()``; the loggers are
        given back when the last user uninstalls (the magics of each shell, a
        log view).
        """
        with self._guard:
            self._users += 1
        for name in CAPTURED_LOGGERS:
            if name in self._installed:
                continue
            log = logging.getLogger(name)
            self._installed[name] = (log.propagate, log.level)
            log.addHandler(self)
            # Without a handler of its own, the logger's records would go to the root's
            # handlers, or to logging.lastResort (stderr): both print under a random cell.
            log.propagate = False
            if log.level == logging.NOTSET:  # INFO too ("serving at ..."), for the log pane
                log.setLevel(logging.INFO)
        return self

    def uninstall(self) -> None:
        """One user less; the last one detaches and restores each logger's ``propagate`` and level."""
        with self._guard:
            self._users = max(0, self._users - 1)
            if self._users:
                return
        for name, (propagate, level) in list(self._installed.items()):
            log = logging.getLogger(name)
            log.removeHandler(self)
            log.propagate = propagate
            log.setLevel(level)
            del self._installed[name]

    # -- reading ---------------------------------------------------------------------
    def records(self, level: str | int = logging.DEBUG, last: int | None = None) -> list[LogEntry]:
        """The kept records at ``level`` or above, oldest first (the ``last`` N)."""
        lowest = logging.getLevelName(level) if isinstance(level, str) else level
        if not isinstance(lowest, int):
            raise ValueError(f"unknown log level {level!r}")
        with self._guard:
            entries = [e for e in self._entries if e.levelno >= lowest]
        return entries[-last:] if last else entries

    def traceback_for(self, error_id: str) -> str | None:
        """The traceback logged with ``error_id`` (None when not captured here)."""
        with self._guard:
            for entry in reversed(self._entries):
                if entry.error_id == error_id and entry.traceback:
                    return entry.traceback
        return None

    def entry_for(self, error_id: str) -> LogEntry | None:
        """The record that names ``error_id`` (the newest), or None."""
        with self._guard:
            for entry in reversed(self._entries):
                if entry.error_id == error_id:
                    return entry
        return None

    def clear(self) -> None:
        with self._guard:
            self._entries.clear()
            self.version += 1

    def __len__(self) -> int:
        return len(self._entries)

    def __repr__(self) -> str:
        return f"LogCapture({len(self._entries)} records, {'installed' if self.installed else 'detached'})"


_capture: LogCapture | None = None
_capture_lock = threading.Lock()


def capture(install: bool = True) -> LogCapture:
    """The kernel's one :class:`LogCapture` (created on first use).

    ``install=True`` counts one more user of it (see :meth:`LogCapture.install`);
    the caller uninstalls when done.
    """
    global _capture
    with _capture_lock:
        if _capture is None:
            _capture = LogCapture()
        if install:
            _capture.install()
        return _capture


def installed_capture() -> Any:
    """The kernel's capture if it exists (installed or not), without creating one."""
    return _capture
