"""The acquirer host under load: terminals keep being served while hundreds of idle,
half-sent and garbage connections are open; deadlines, eviction at the cap, and a flood
logged once per interval (speed is in benchmarks/host_load.py, not here)."""

from __future__ import annotations

import contextlib
import logging
import os
import socket
import struct
import threading
from collections.abc import Iterator
from contextlib import ExitStack

import pytest

from rig.host import AcquirerHost
from rig.host.conntable import ConnTable
from rig.host.flood import FloodLog
from rig.host.rules import HostFaultSpec
from rig.timeline.events import EventKind, ListSink
from tests import cup_reference as ref

from .hostclient import (
    closed_by_peer,
    connect,
    exchange,
    lab,
    peer_of,
    recv_frame,
    wait_event,
    wait_events,
)

pytestmark = pytest.mark.integration

CFG = lab(processing_ms=0)
T1, T2 = CFG.terminals["T1"], CFG.terminals["T2"]


def signon(t: object = T1, stan: str = "000001") -> bytes:
    return ref.signon_0800(stan=stan, terminal_id=t.terminal_id,  # type: ignore[attr-defined]
                           merchant_id=t.merchant_id,  # type: ignore[attr-defined]
                           key_mode=t.key_mode)  # type: ignore[attr-defined]


def rc_of(reply: bytes) -> str:
    return str(ref.parse_frame(reply).fields[39])


@pytest.fixture
def sink() -> ListSink:
    return ListSink()


@pytest.fixture
def socks() -> Iterator[ExitStack]:
    with ExitStack() as stack:
        yield stack


def hostile(host: AcquirerHost, socks: ExitStack, n: int) -> dict[str, list[socket.socket]]:
    """``n`` connections each of: idle; half-sent (10 bytes of a sign-on); garbage that never
    completes a frame (a length of 8000, then 300 random bytes); garbage frames (random bodies:
    the host closes these at once)."""
    out: dict[str, list[socket.socket]] = {"idle": [], "half": [], "junk": [], "bad": []}
    for _ in range(n):
        for kind in out:
            s = socks.enter_context(connect(host.address))
            if kind == "half":
                s.sendall(signon()[:10])
            elif kind == "junk":
                s.sendall((8000).to_bytes(2, "big") + os.urandom(300))
            elif kind == "bad":
                s.sendall((40).to_bytes(2, "big") + os.urandom(40))
            out[kind].append(s)
    return out


def test_signon_answered_while_300_hostile_connections_are_open(sink: ListSink,
                                                                socks: ExitStack) -> None:
    with AcquirerHost(CFG, sink, listen="127.0.0.1:0", frame_timeout_s=4.0) as h:
        early = socks.enter_context(connect(h.address))
        assert rc_of(exchange(early, signon(T2))[1]) == "00"
        bad = hostile(h, socks, 75)  # 75 x 4 = 300 hostile connections
        wait_events(sink, EventKind.HOST_CONNECT, 301)
        # every one is open at the host but the garbage frames (closed as protocol errors)
        for s in bad["bad"]:
            assert closed_by_peer(s)
        assert h.connections >= 226  # opening them takes well under the 4 s frame deadline
        for i in range(3):  # fresh terminals and the long-lived one are served meanwhile
            with connect(h.address) as s:
                assert rc_of(exchange(s, signon(stan=f"00001{i}"))[1]) == "00"
        assert rc_of(exchange(early, signon(T2, "000002"))[1]) == "00"
        assert h.states.get("T1").signed_on and h.states.get("T2").signons == 2

        # the half-sent and the unfinished garbage are closed at their frame deadline...
        for s in bad["half"] + bad["junk"]:
            assert closed_by_peer(s, timeout=15.0)
        half = wait_event(sink, lambda e: e.kind is EventKind.PROTOCOL_ERROR
                          and e.data.get("peer") == peer_of(bad["half"][0]))
        assert "frame incomplete after 4 s (10 bytes received)" in str(half.data["error"])
        # ...the idle ones wait for their idle limit (30 s), not the frame deadline
        assert not closed_by_peer(bad["idle"][0], timeout=0.2)
        assert rc_of(exchange(early, signon(T2, "000003"))[1]) == "00"
    assert not [e for e in sink.events if e.kind is EventKind.ERROR]


def test_idle_limit_closes_silent_connections(sink: ListSink) -> None:
    with AcquirerHost(CFG, sink, listen="127.0.0.1:0", idle_timeout_s=0.3,
                      frame_timeout_s=5.0) as h, connect(h.address) as s:
        assert closed_by_peer(s, timeout=5.0)
        disc = wait_event(sink, lambda e: e.kind is EventKind.HOST_DISCONNECT)
        assert disc.data["reason"] == "idle timeout" and disc.data["frames"] == 0


def test_flood_at_the_cap_evicts_hostile_ones_not_the_terminal(sink: ListSink,
                                                                socks: ExitStack) -> None:
    with AcquirerHost(CFG, sink, listen="127.0.0.1:0", max_connections=20) as h:
        term = socks.enter_context(connect(h.address))
        assert rc_of(exchange(term, signon())[1]) == "00"
        flood = [socks.enter_context(connect(h.address)) for _ in range(60)]
        for s in flood[:40]:  # the oldest 40 made room for the newest
            assert closed_by_peer(s)
        assert h.connections <= 20
        assert rc_of(exchange(term, signon(stan="000002"))[1]) == "00"  # still connected
        with connect(h.address) as s:  # and a new terminal still gets in
            assert rc_of(exchange(s, signon(T2))[1]) == "00"
        evicted = [e for e in list(sink.events) if e.kind is EventKind.HOST_DISCONNECT
                   and e.data["reason"] == "evicted"]
        assert len(evicted) >= 41 and peer_of(term) not in {e.data["peer"] for e in evicted}


def test_flood_is_logged_once_per_interval(sink: ListSink, socks: ExitStack,
                                           caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="rig.host")
    with AcquirerHost(CFG, sink, listen="127.0.0.1:0", flood_interval_s=60.0) as h:
        for _ in range(30):
            s = socks.enter_context(connect(h.address))
            s.sendall((40).to_bytes(2, "big") + os.urandom(40))
            assert closed_by_peer(s)
        assert len(wait_events(sink, EventKind.PROTOCOL_ERROR, 30)) == 30  # events: each one
        lines = [r.getMessage() for r in caplog.records if "protocol error" in r.getMessage()]
        assert len(lines) == 1 and "closing" in lines[0]  # the log: the first one only
    summary = [r.getMessage() for r in caplog.records if "more protocol errors" in r.getMessage()]
    assert len(summary) == 1 and summary[0].startswith("host: 29 more protocol errors")


def test_a_delayed_reply_holds_up_only_its_own_connection(sink: ListSink,
                                                          socks: ExitStack) -> None:
    with AcquirerHost(CFG, sink, listen="127.0.0.1:0") as h:
        h.rules.add_fault(HostFaultSpec("slow_signon", terminal="T1", ms=1500))
        slow = socks.enter_context(connect(h.address))
        slow.sendall(signon())
        wait_event(sink, lambda e: e.kind is EventKind.SIGNON_REQ and e.terminal == "T1")
        fast = socks.enter_context(connect(h.address))
        assert rc_of(exchange(fast, signon(T2))[1]) == "00"
        slow.settimeout(0.05)
        with pytest.raises(TimeoutError):  # T1's reply is still being held back
            slow.recv(1)
        slow.settimeout(5.0)
        assert rc_of(recv_frame(slow)) == "00"


def test_a_peer_pipelining_frames_does_not_starve_the_others(sink: ListSink) -> None:
    with AcquirerHost(CFG, sink, listen="127.0.0.1:0") as h:
        greedy = connect(h.address)
        burst = signon() + b"\x00\x00" * 2_000_000  # a sign-on, then 4 MB of keep-alives

        def blast() -> None:
            with contextlib.suppress(OSError):  # reset when closed below
                greedy.sendall(burst)

        sender = threading.Thread(target=blast, daemon=True)
        sender.start()
        wait_event(sink, lambda e: e.kind is EventKind.SIGNON_RSP and e.terminal == "T1")
        try:  # the host is busy with keep-alives for seconds: others still get their turn
            with connect(h.address) as s:
                assert rc_of(exchange(s, signon(T2))[1]) == "00"
        finally:
            greedy.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            greedy.shutdown(socket.SHUT_RDWR)  # wakes the sender
            sender.join(10.0)
            greedy.close()  # a reset: the host drops what it has not read


def test_stop_with_hostile_connections_open(sink: ListSink, socks: ExitStack) -> None:
    h = AcquirerHost(CFG, sink, listen="127.0.0.1:0").start()
    bad = hostile(h, socks, 10)
    wait_events(sink, EventKind.HOST_CONNECT, 40)
    h.stop()
    for s in bad["idle"] + bad["half"]:
        assert closed_by_peer(s)
    reasons = {e.data["reason"] for e in wait_events(sink, EventKind.HOST_DISCONNECT, 40)}
    assert reasons <= {"host stopped", "protocol error"} and "host stopped" in reasons


# --- the pieces, without sockets ---------------------------------------------------------------

def test_conn_table_evicts_never_served_then_least_recently_served() -> None:
    t: ConnTable[str] = ConnTable(3)
    for cid in (1, 2, 3):
        t.add(cid, f"c{cid}")
    t.busy(1)
    t.served(1)
    t.busy(2)  # mid-request: never a victim
    assert t.full and t.victim() == (3, "c3")
    t.remove(3)
    assert t.victim() == (1, "c1")
    t.served(2)
    t.busy(1)
    assert t.victim() == (2, "c2")
    t.busy(2)
    assert t.victim() is None and len(t) == 2


def test_flood_log_one_line_per_kind_and_interval(caplog: pytest.LogCaptureFixture) -> None:
    clock = [0.0]
    flood = FloodLog(logging.getLogger("test.flood"), 10.0, clock=lambda: clock[0])
    caplog.set_level(logging.INFO, logger="test.flood")
    for i in range(100):
        flood.note("protocol errors", logging.INFO, "bad frame from %s", f"p{i}")
    flood.note("evictions", logging.WARNING, "evicted %s", "q")
    assert [r.getMessage() for r in caplog.records] == ["bad frame from p0", "evicted q"]
    clock[0] = 5.0
    flood.flush()  # the interval is not over: nothing yet
    assert len(caplog.records) == 2
    clock[0] = 10.5
    flood.flush()
    assert caplog.records[-1].getMessage() == (
        "host: 99 more protocol errors in the last 10.0 s (last: bad frame from p99)")
    assert len(caplog.records) == 3  # one eviction: nothing held back, no summary
    flood.note("protocol errors", logging.INFO, "bad frame from %s", "again")
    assert caplog.records[-1].getMessage() == "bad frame from again"
