"""A small SCPI parser for the virtual lab's instruments (an IEEE 488.2 / SCPI-1999 subset).

A program message (one line) holds units separated by ``;``; a unit is a header and parameters
separated by ``,``. Headers match the long or the short form of each mnemonic, case-insensitively
(``VOLTage`` matches ``VOLT`` and ``VOLTAGE``); ``[...]`` marks an optional node and ``#`` a node
that takes a numeric suffix (``SOURce1``, ``CH2``). After a compound header the next unit is
resolved relative to the same path (SCPI's path rule, ``SOUR:VOLT 5;CURR 1``); a leading ``:``
starts from the root, and an unknown relative header is retried from the root (lenient).

Command errors (-1xx) discard the rest of the line, execution errors (-2xx) do not. Replies to
several queries in one line are joined with ``;``.
"""

from __future__ import annotations

import asyncio
import logging
import math
import re
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

from .wire import Conn, LineTooLong, WireStamp

log = logging.getLogger(__name__)

MAX_LINE = 16 * 1024  # longer program messages are dropped with -223 "Too much data"

# SCPI-1999 standard error codes (code, message)
NO_ERROR = (0, "No error")
COMMAND_ERROR = (-100, "Command error")
DATA_TYPE_ERROR = (-104, "Data type error")
PARAMETER_NOT_ALLOWED = (-108, "Parameter not allowed")
MISSING_PARAMETER = (-109, "Missing parameter")
UNDEFINED_HEADER = (-113, "Undefined header")
INVALID_SUFFIX = (-131, "Invalid suffix")
SETTINGS_CONFLICT = (-221, "Settings conflict")
DATA_OUT_OF_RANGE = (-222, "Data out of range")
TOO_MUCH_DATA = (-223, "Too much data")
ILLEGAL_PARAMETER_VALUE = (-224, "Illegal parameter value")
DEVICE_ERROR = (-300, "Device-specific error")
QUEUE_OVERFLOW = (-350, "Queue overflow")


class ScpiError(Exception):
    """Raised by a handler; the executor pushes it onto the session's error queue."""

    def __init__(self, error: tuple[int, str], detail: str = "") -> None:
        code, message = error
        self.code = code
        self.message = f"{message};{detail}" if detail else message
        super().__init__(f'{self.code},"{self.message}"')


class ErrorQueue:
    """FIFO of (code, message); when full the newest entry becomes -350 "Queue overflow"."""

    def __init__(self, size: int = 20) -> None:
        self.size = size
        self._q: deque[tuple[int, str]] = deque()

    def push(self, code: int, message: str) -> None:
        if len(self._q) >= self.size:
            self._q[-1] = QUEUE_OVERFLOW
        else:
            self._q.append((code, message))

    def pop(self) -> tuple[int, str]:
        return self._q.popleft() if self._q else NO_ERROR

    def clear(self) -> None:
        self._q.clear()

    def __len__(self) -> int:
        return len(self._q)


# --- headers ---------------------------------------------------------------------------------

@dataclass(frozen=True, slots=True)
class _Node:
    short: str
    long: str
    optional: bool
    suffix: bool


_PATTERN_NODE = re.compile(r"(\[:?|:)?([A-Za-z]+)(#?)\]?")
_TOKEN = re.compile(r"([A-Za-z_]+)(\d{0,3})")


def compile_header(pattern: str) -> tuple[_Node, ...]:
    """``"[SOURce#]:VOLTage[:LEVel]"`` -> nodes."""
    nodes = []
    for m in _PATTERN_NODE.finditer(pattern):
        spelled = m.group(2)
        short = "".join(c for c in spelled if c.isupper()) or spelled.upper()
        nodes.append(_Node(short, spelled.upper(), (m.group(1) or "").startswith("["), m.group(3) == "#"))
    return tuple(nodes)


def _match(nodes: tuple[_Node, ...], tokens: list[tuple[str, str]]) -> list[int | None] | None:
    """Numeric suffixes per matched node, or None when the tokens do not fit the pattern."""
    if not nodes:
        return [] if not tokens else None
    node, rest = nodes[0], nodes[1:]
    if tokens:
        name, digits = tokens[0]
        if name in (node.short, node.long) and (not digits or node.suffix):
            tail = _match(rest, tokens[1:])
            if tail is not None:
                return [int(digits) if digits else None, *tail]
    if node.optional:
        tail = _match(rest, tokens)
        if tail is not None:
            return [None, *tail]
    return None


def _split(text: str, sep: str) -> list[str]:
    """Split on ``sep`` outside quotes and parentheses."""
    parts: list[str] = []
    buf: list[str] = []
    quote, depth = "", 0
    for c in text:
        if quote:
            quote = "" if c == quote else quote
        elif c in "\"'":
            quote = c
        elif c == "(":
            depth += 1
        elif c == ")":
            depth = max(0, depth - 1)
        elif c == sep and depth == 0:
            parts.append("".join(buf))
            buf = []
            continue
        buf.append(c)
    parts.append("".join(buf))
    return parts


# --- parameters ------------------------------------------------------------------------------

_NUMBER = re.compile(r"([+-]?(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d{1,3})?)\s*([A-Za-z]*)")


def number(arg: str, *, unit: str, lo: float, hi: float, default: float | None = None) -> float:
    """A decimal value with an optional unit (``V``/``mV``), or MIN / MAX / DEF."""
    word = arg.strip().upper()
    if word in ("MIN", "MINIMUM"):
        return lo
    if word in ("MAX", "MAXIMUM"):
        return hi
    if word in ("DEF", "DEFAULT") and default is not None:
        return default
    m = _NUMBER.fullmatch(arg.strip())
    if not m:
        raise ScpiError(DATA_TYPE_ERROR)
    scale = {"": 1.0, unit: 1.0, "M" + unit: 1e-3}.get(m.group(2).upper())
    if scale is None:
        raise ScpiError(INVALID_SUFFIX)
    value = float(m.group(1)) * scale
    if not math.isfinite(value) or not lo <= value <= hi:
        raise ScpiError(DATA_OUT_OF_RANGE)
    return value


def boolean(arg: str) -> bool:
    word = arg.strip().upper()
    if word in ("ON", "1"):
        return True
    if word in ("OFF", "0"):
        return False
    raise ScpiError(ILLEGAL_PARAMETER_VALUE)


_CHANNEL_LIST = re.compile(r"\(\s*@([\d\s,:]*)\)")
_RANGE = re.compile(r"\s*(\d{1,3})\s*(?::\s*(\d{1,3})\s*)?")


def channel_list(arg: str, count: int) -> list[int]:
    """``(@1)``, ``(@1,3)``, ``(@1:3)`` -> channel numbers."""
    m = _CHANNEL_LIST.fullmatch(arg.strip())
    if not m:
        raise ScpiError(DATA_TYPE_ERROR)
    out: list[int] = []
    for part in m.group(1).split(","):
        r = _RANGE.fullmatch(part)
        if not r:
            raise ScpiError(ILLEGAL_PARAMETER_VALUE)
        first, last = int(r.group(1)), int(r.group(2) or r.group(1))
        if not 1 <= first <= last <= count:
            raise ScpiError(DATA_OUT_OF_RANGE)
        out.extend(range(first, last + 1))
    return out


def channel_name(arg: str, count: int, prefixes: tuple[str, ...] = ("CH",)) -> int:
    """``CH2`` (or another prefix) -> 2."""
    m = re.fullmatch(r"([A-Za-z]+)(\d{1,3})", arg.strip())
    if not m or m.group(1).upper() not in prefixes:
        raise ScpiError(ILLEGAL_PARAMETER_VALUE)
    ch = int(m.group(2))
    if not 1 <= ch <= count:
        raise ScpiError(DATA_OUT_OF_RANGE)
    return ch


# --- execution -------------------------------------------------------------------------------

C = TypeVar("C")


@dataclass(frozen=True, slots=True)
class Call(Generic[C]):
    """One parsed program message unit handed to a handler."""

    ctx: C
    args: list[str]
    suffix: int | None  # the first numeric header suffix (SOURce2 -> 2), if any

    def params(self, lo: int, hi: int | None = None) -> list[str]:
        """The parameters, checked to number between ``lo`` and ``hi`` (default ``lo``)."""
        if len(self.args) < lo:
            raise ScpiError(MISSING_PARAMETER)
        if len(self.args) > (lo if hi is None else hi):
            raise ScpiError(PARAMETER_NOT_ALLOWED)
        return self.args


Handler = Callable[[Call[C]], "str | None"]


def fixed(reply: str | None, action: Callable[[], object] | None = None) -> Handler[Any]:
    """A handler without parameters that runs ``action`` and answers ``reply``."""

    def handler(call: Call[Any]) -> str | None:
        call.params(0)
        if action is not None:
            action()
        return reply

    return handler


class CommandTable(Generic[C]):
    """Headers -> handlers; ``execute`` runs one program message line."""

    def __init__(self) -> None:
        self._common: dict[str, Handler[C]] = {}
        self._tree: list[tuple[tuple[_Node, ...], Handler[C] | None, Handler[C] | None]] = []

    def common(self, header: str, handler: Handler[C]) -> None:
        """A common command such as ``*IDN?`` or ``*RST`` (exact header, any case)."""
        self._common[header.upper()] = handler

    def add(self, pattern: str, *, write: Handler[C] | None = None,
            query: Handler[C] | None = None) -> None:
        self._tree.append((compile_header(pattern), write, query))

    def execute(self, line: str, ctx: C, errors: ErrorQueue,
                after_unit: Callable[[], None] | None = None) -> str | None:
        """Run every unit of ``line``; errors go to ``errors``; returns the reply or None."""
        replies: list[str] = []
        path: list[tuple[str, str]] = []
        for unit in _split(line, ";"):
            unit = unit.strip()
            if not unit:
                continue
            try:
                reply, path = self._run(unit, ctx, path)
            except ScpiError as e:
                errors.push(e.code, e.message)
                if -199 <= e.code <= -100:
                    break
                continue
            except Exception:  # a bug in a handler must not take the instrument down
                log.exception("SCPI handler failed on %r", unit)
                errors.push(*DEVICE_ERROR)
                break
            finally:
                if after_unit is not None:
                    after_unit()
            if reply is not None:
                replies.append(reply)
        return ";".join(replies) if replies else None

    def _run(self, unit: str, ctx: C,
             path: list[tuple[str, str]]) -> tuple[str | None, list[tuple[str, str]]]:
        header, _, rest = re.sub(r"\s", " ", unit, count=1).partition(" ")
        rest = rest.strip()
        args = [a.strip() for a in _split(rest, ",")] if rest else []
        if any(not a for a in args):
            raise ScpiError(MISSING_PARAMETER)
        if header.startswith("*"):
            handler = self._common.get(header.upper())
            if handler is None:
                raise ScpiError(UNDEFINED_HEADER)
            return handler(Call(ctx, args, None)), path
        query = header.endswith("?")
        name = header[:-1] if query else header
        absolute = name.startswith(":")
        tokens: list[tuple[str, str]] = []
        for word in (name[1:] if absolute else name).split(":"):
            m = _TOKEN.fullmatch(word)
            if not m:
                raise ScpiError(UNDEFINED_HEADER)
            tokens.append((m.group(1).upper(), m.group(2)))
        for candidate in ([tokens] if absolute or not path else [path + tokens, tokens]):
            for nodes, write, ask in self._tree:
                handler = ask if query else write
                if handler is None:
                    continue
                suffixes = _match(nodes, candidate)
                if suffixes is not None:
                    suffix = next((s for s in suffixes if s is not None), None)
                    return handler(Call(ctx, args, suffix)), candidate[:-1]
        raise ScpiError(UNDEFINED_HEADER)


# --- raw socket ------------------------------------------------------------------------------

async def serve_lines(conn: Conn, process: Callable[[str, WireStamp], str | None],
                      on_overrun: Callable[[], None]) -> None:
    """Serve one client: each ``\\n``-terminated line to ``process`` with the kernel's receive
    stamp of the segment that completed it, its reply back + ``\\n``.

    A line over :data:`MAX_LINE` is skipped and ``on_overrun`` called; a partial line at the end
    of the stream is dropped. Returns when the client leaves or the task is cancelled; always
    closes the connection.
    """
    log.debug("SCPI client %s connected", conn.peer)
    try:
        while True:
            try:
                raw, rx = await conn.readline(MAX_LINE, b"\n")
            except LineTooLong:
                on_overrun()
                continue
            if not raw.endswith(b"\n"):
                break
            reply = process(raw.decode("utf-8", errors="replace").strip("\r\n\x00 "), rx)
            if reply is not None:
                conn.write(reply.encode() + b"\n")
                await conn.drain()
    except (ConnectionError, OSError) as e:
        log.debug("SCPI client %s: %s", conn.peer, e)
    except asyncio.CancelledError:
        pass
    finally:
        conn.close()
        log.debug("SCPI client %s gone", conn.peer)
