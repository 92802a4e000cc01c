"""Test helpers: a raw TCP terminal client and event polling for the acquirer host tests."""

from __future__ import annotations

import socket
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from rig.config import LabConfig, load_lab
from rig.timeline.events import Event, EventKind, ListSink

VIRTUAL_LAB = Path(__file__).resolve().parents[2] / "configs" / "labs" / "virtual.yaml"


def lab(**host: Any) -> LabConfig:
    """The virtual lab config with ``host`` settings overridden."""
    return load_lab(VIRTUAL_LAB, overrides={"host": host} if host else None)


def connect(address: tuple[str, int], timeout: float = 5.0) -> socket.socket:
    sock = socket.create_connection(address, timeout=timeout)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return sock


def peer_of(sock: socket.socket) -> str:
    ip, port = sock.getsockname()[:2]
    return f"{ip}:{port}"


def recv_exactly(sock: socket.socket, n: int) -> bytes:
    buf = b""
    while len(buf) < n:
        chunk = sock.recv(n - len(buf))
        if not chunk:
            raise EOFError(f"closed after {len(buf)} of {n} bytes")
        buf += chunk
    return buf


def recv_frame(sock: socket.socket) -> bytes:
    """One whole frame, length prefix included."""
    prefix = recv_exactly(sock, 2)
    return prefix + recv_exactly(sock, int.from_bytes(prefix, "big"))


def exchange(sock: socket.socket, data: bytes) -> tuple[int, bytes, int]:
    """Send ``data``, read one reply frame: (monotonic before send, reply, monotonic after)."""
    before = time.monotonic_ns()
    sock.sendall(data)
    reply = recv_frame(sock)
    return before, reply, time.monotonic_ns()


def closed_by_peer(sock: socket.socket, timeout: float = 5.0) -> bool:
    """True when the peer closes (EOF or reset) within ``timeout``; replies are drained."""
    sock.settimeout(timeout)
    end = time.monotonic() + timeout
    try:
        while time.monotonic() < end:
            if not sock.recv(4096):
                return True
    except (ConnectionResetError, BrokenPipeError):
        return True
    except TimeoutError:
        return False
    return False


def wait_event(sink: ListSink, pred: Callable[[Event], bool], timeout: float = 5.0,
               since: int = 0) -> Event:
    """The first event from index ``since`` on that matches ``pred`` (waits for it)."""
    end = time.monotonic() + timeout
    while True:
        for e in sink.events[since:]:
            if pred(e):
                return e
        if time.monotonic() > end:
            kinds = [(e.kind.value, dict(e.data)) for e in sink.events[-10:]]
            raise AssertionError(f"no matching event within {timeout} s; last: {kinds}")
        time.sleep(0.005)


def events_of(sink: ListSink, kind: EventKind, peer: str) -> list[Event]:
    return [e for e in list(sink.events) if e.kind is kind and e.data.get("peer") == peer]


def wait_events(sink: ListSink, kind: EventKind, count: int, timeout: float = 5.0) -> list[Event]:
    """Exactly the first ``count`` events of ``kind`` (waits until there are that many)."""
    end = time.monotonic() + timeout
    while True:
        found = [e for e in list(sink.events) if e.kind is kind]
        if len(found) >= count:
            return found[:count]
        if time.monotonic() > end:
            raise AssertionError(f"{len(found)} {kind.value} events within {timeout} s, "
                                 f"expected {count}")
        time.sleep(0.005)
