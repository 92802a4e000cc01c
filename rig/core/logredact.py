"""A logging filter that runs every log record through :func:`rig.core.redact.redact_text`.

``install()`` puts one :class:`RedactFilter` on every handler that exists (the root logger's
and any other logger's, plus ``logging.lastResort``) and on every handler added later to any
logger, and makes uncaught exceptions (``sys.excepthook`` / ``threading.excepthook``) print
redacted tracebacks. It is idempotent; the rig service, the bench and the virtual lab call it.
"""

from __future__ import annotations

import logging
import sys
import threading
import traceback
from typing import Any

from .redact import redact_text

_FORMATTER = logging.Formatter()
_lock = threading.Lock()
_installed = False


class RedactFilter(logging.Filter):
    """Replaces a record's message (formatted with its args), exception text and stack with
    their redacted forms. Never drops a record."""

    def filter(self, record: logging.LogRecord) -> bool:
        if getattr(record, "_rig_redacted", False):
            return True
        try:
            msg = record.getMessage()
        except Exception:  # a bad format string: let the handler report it as usual
            return True
        record.msg, record.args = redact_text(msg), None
        if record.exc_info and not record.exc_text:
            record.exc_text = _FORMATTER.formatException(record.exc_info)
        if record.exc_text:
            record.exc_text = redact_text(record.exc_text)
        if record.stack_info:
            record.stack_info = redact_text(record.stack_info)
        record._rig_redacted = True
        return True


FILTER = RedactFilter()


def add_to(handler: logging.Handler) -> None:
    """Put the redaction filter on one handler (once)."""
    if not any(isinstance(f, RedactFilter) for f in handler.filters):
        handler.addFilter(FILTER)


def _all_handlers() -> list[logging.Handler]:
    out = list(logging.getLogger().handlers)
    for lg in list(logging.root.manager.loggerDict.values()):
        if isinstance(lg, logging.Logger):
            out += lg.handlers
    if logging.lastResort is not None:
        out.append(logging.lastResort)
    return out


_orig_add_handler = logging.Logger.addHandler


def _add_handler(self: logging.Logger, hdlr: logging.Handler) -> None:
    add_to(hdlr)
    _orig_add_handler(self, hdlr)


def _excepthook(exc_type: Any, exc: Any, tb: Any) -> None:
    text = "".join(traceback.format_exception(exc_type, exc, tb))
    sys.stderr.write(redact_text(text))


def _thread_excepthook(args: threading.ExceptHookArgs) -> None:
    if args.exc_type is SystemExit:
        return
    name = args.thread.name if args.thread is not None else "?"
    text = "".join(traceback.format_exception(args.exc_type, args.exc_value, args.exc_traceback))
    sys.stderr.write(redact_text(f"Exception in thread {name}:\n{text}"))


def install() -> None:
    """Redact every log record on every handler, now and later; idempotent."""
    global _installed
    with _lock:
        for h in _all_handlers():
            add_to(h)
        if _installed:
            return
        logging.Logger.addHandler = _add_handler  # type: ignore[method-assign]
        if sys.excepthook is sys.__excepthook__:
            sys.excepthook = _excepthook
        if threading.excepthook is threading.__excepthook__:
            threading.excepthook = _thread_excepthook
        _installed = True
