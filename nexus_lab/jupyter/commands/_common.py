"""What the subcommands share: user errors as one ``UsageError`` line.

Example::

    try:
        app.start(block=False)
    except USER_ERRORS as exc:
        raise fail("the platform did not start", exc) from None
"""

from __future__ import annotations

from IPython.core.error import UsageError

from ...errors import NexusError

__all__ = ["USER_ERRORS", "one_line", "fail"]

# Exceptions from nexus_lab and the platform that are user errors, shown as one line.
USER_ERRORS = (NexusError, ValueError, TypeError, KeyError, RuntimeError, OSError)


def one_line(exc: BaseException) -> str:
    """The text of ``exc`` on one line (a KeyError without its quotes).

    >>> one_line(KeyError("no such thing"))
    'no such thing'
    """
    text = str(exc).strip()
    if isinstance(exc, KeyError) and not isinstance(exc, NexusError) and exc.args:
        text = str(exc.args[0])
    text = " ".join(text.split())
    return text or type(exc).__name__


def fail(prefix: str, exc: BaseException) -> UsageError:
    """``UsageError("prefix: message")``, one line."""
    return UsageError(f"{prefix}: {one_line(exc)}")
