"""The acquirer host over real TCP, checked with the independent CUP decoder."""

from __future__ import annotations

import socket
import time
from collections.abc import Iterator
from datetime import datetime

import pytest

from rig.core import netstamp as host_timestamps
from rig.core.clock import ClockSource
from rig.host import AcquirerHost
from rig.iso8583 import frame
from rig.iso8583.iso87 import ISO87
from rig.timeline.events import EventKind, ListSink
from tests import cup_reference as ref

from .hostclient import (
    closed_by_peer,
    connect,
    events_of,
    exchange,
    lab,
    peer_of,
    recv_frame,
    wait_event,
    wait_events,
)

pytestmark = pytest.mark.integration

CFG = lab(processing_ms=2, rules={"T2": {"processing_ms": 150}})
MERCHANT = CFG.terminals["T1"].merchant_id


@pytest.fixture
def sink() -> ListSink:
    return ListSink()


@pytest.fixture
def host(sink: ListSink) -> Iterator[AcquirerHost]:
    with AcquirerHost(CFG, sink, listen="127.0.0.1:0") as h:
        yield h


def signon(name: str, stan: str = "000001", **kw: object) -> bytes:
    t = CFG.terminals[name]
    return ref.signon_0800(stan=stan, terminal_id=t.terminal_id, merchant_id=t.merchant_id,
                           key_mode=t.key_mode, **kw)  # type: ignore[arg-type]


@pytest.mark.parametrize("name", ["T1", "T2", "T3"])
def test_signon_reply_decodes_and_kernel_stamp_brackets(host: AcquirerHost, sink: ListSink,
                                                        name: str) -> None:
    term = CFG.terminals[name]
    tpdu = bytes.fromhex("6000031234")
    with connect(host.address) as sock:
        before, reply, after = exchange(sock, signon(name, "000042", tpdu=tpdu))
        peer = peer_of(sock)
    f = ref.parse_frame(reply)
    assert f.mti == "0810"
    assert f.tpdu == bytes.fromhex("6012340003")  # destination and source swapped
    assert f.header[2] & 0x0F == 0  # no follow-up work requested
    assert sorted(f.fields) == [11, 12, 13, 32, 37, 39, 41, 42, 60, 62]
    assert f.fields[39] == "00" and f.fields[11] == "000042"
    assert (f.fields[41], f.fields[42]) == (term.terminal_id, term.merchant_id)
    assert f.fields[60] == f"00000001{term.key_mode}"
    datetime.strptime(f.text(13) + f.text(12), "%m%d%H%M%S")
    assert len(f.fields[37]) == 12
    keys = ref.decode_keys(bytes.fromhex(term.tmk), f.binary(62), term.key_mode)  # all KCVs
    assert (keys.tdk is not None) == (term.key_mode == "004")

    state = host.states.get(name)
    assert state.signed_on and state.key_mode == term.key_mode and state.batch == "000001"
    assert state.keys is not None and state.keys.mak == keys.mak and state.keys.pik == keys.pik
    assert "mak" not in repr(state) and keys.mak.hex() not in repr(state)

    req = wait_event(sink, lambda e: e.kind is EventKind.SIGNON_REQ)
    rsp = wait_event(sink, lambda e: e.kind is EventKind.SIGNON_RSP)  # may follow the read
    assert req.clock is ClockSource.KERNEL and req.terminal == name and req.source == "host"
    assert req.data["stan"] == "000042" and req.data["key_mode"] == term.key_mode
    assert req.data["peer"] == peer
    assert before <= req.mono_ns <= after
    assert req.mono_ns < rsp.mono_ns
    assert rsp.terminal == name and rsp.data["rc"] == "00" and rsp.data["stan"] == "000042"
    assert abs((req.wall_ns - req.mono_ns) - (time.time_ns() - time.monotonic_ns())) < 5_000_000


def test_processing_delay_is_honoured(host: AcquirerHost, sink: ListSink) -> None:
    with connect(host.address) as sock:
        fast_before, _, fast_after = exchange(sock, signon("T1"))
        slow_before, _, slow_after = exchange(sock, signon("T2"))
    req1, req2 = wait_events(sink, EventKind.SIGNON_REQ, 2)
    rsp1, rsp2 = wait_events(sink, EventKind.SIGNON_RSP, 2)
    assert 0.002 <= (rsp1.mono_ns - req1.mono_ns) / 1e9 < 0.100  # host.processing_ms = 2
    assert 0.150 <= (rsp2.mono_ns - req2.mono_ns) / 1e9 < 0.400  # rules.T2.processing_ms
    assert (slow_after - slow_before) / 1e9 >= 0.150


def test_two_frames_on_one_connection_get_fresh_keys(host: AcquirerHost,
                                                     sink: ListSink) -> None:
    tmk = bytes.fromhex(CFG.terminals["T1"].tmk)
    with connect(host.address) as sock:
        _, r1, _ = exchange(sock, signon("T1", "000001"))
        _, r2, _ = exchange(sock, signon("T1", "000002"))
        sock.sendall(signon("T3", "000003") + signon("T1", "000004"))  # back to back
        r3, r4 = recv_frame(sock), recv_frame(sock)
        peer = peer_of(sock)
    replies = [ref.parse_frame(r) for r in (r1, r2, r3, r4)]
    assert [r.fields[11] for r in replies] == ["000001", "000002", "000003", "000004"]
    k1, k2 = (ref.decode_keys(tmk, r.binary(62), "003") for r in replies[:2])
    assert k1.pik != k2.pik and k1.mak != k2.mak
    reqs = events_of(sink, EventKind.SIGNON_REQ, peer)
    assert [e.terminal for e in reqs] == ["T1", "T1", "T3", "T1"]
    assert all(e.clock is ClockSource.KERNEL for e in reqs)
    assert reqs[0].mono_ns < reqs[1].mono_ns < reqs[2].mono_ns <= reqs[3].mono_ns
    wait_event(sink, lambda e: e.kind is EventKind.HOST_DISCONNECT and e.data["frames"] == 4)


def test_split_frame_gets_the_stamp_of_its_last_segment(host: AcquirerHost,
                                                        sink: ListSink) -> None:
    data = signon("T1")
    pieces = [data[:1], data[1:9], data[9:40], data[40:]]  # first cut inside the length
    with connect(host.address) as sock:
        first = time.monotonic_ns()
        for piece in pieces[:-1]:
            sock.sendall(piece)
            time.sleep(0.03)
        last = time.monotonic_ns()
        sock.sendall(pieces[-1])
        ref.parse_frame(recv_frame(sock))
        after = time.monotonic_ns()
    req = wait_event(sink, lambda e: e.kind is EventKind.SIGNON_REQ)
    assert req.clock is ClockSource.KERNEL
    assert last <= req.mono_ns <= after
    assert req.mono_ns - first >= 3 * 30_000_000


def test_unknown_terminal_gets_rc_03_without_keys(host: AcquirerHost, sink: ListSink) -> None:
    with connect(host.address) as sock:
        _, reply, _ = exchange(sock, ref.signon_0800(
            stan="000007", terminal_id="99999999", merchant_id=MERCHANT, key_mode="003"))
    f = ref.parse_frame(reply)
    assert f.fields[39] == "03" and 62 not in f.fields and f.fields[41] == "99999999"
    req = wait_event(sink, lambda e: e.kind is EventKind.SIGNON_REQ)
    rsp = wait_event(sink, lambda e: e.kind is EventKind.SIGNON_RSP)
    assert req.terminal is None and req.data["terminal_id"] == "99999999"
    assert rsp.terminal is None and rsp.data["rc"] == "03"
    assert not [e for e in sink.events if e.kind is EventKind.PROTOCOL_ERROR]


def test_rc_override_refuses_signon(host: AcquirerHost, sink: ListSink) -> None:
    host.rules.set_rc("T1", "96")
    with connect(host.address) as sock:
        _, reply, _ = exchange(sock, signon("T1"))
        host.rules.set_rc("T1", None)
        _, ok, _ = exchange(sock, signon("T1", "000002"))
    f = ref.parse_frame(reply)
    assert f.fields[39] == "96" and 62 not in f.fields
    assert ref.parse_frame(ok).fields[39] == "00"
    assert [e.data["rc"] for e in wait_events(sink, EventKind.SIGNON_RSP, 2)] == ["96", "00"]


def test_echo_and_signoff(host: AcquirerHost, sink: ListSink) -> None:
    t = CFG.terminals["T1"]
    with connect(host.address) as sock:
        exchange(sock, signon("T1"))
        assert host.states.get("T1").signed_on
        _, echo, _ = exchange(sock, ref.network_08x0(
            mti="0820", stan="000002", terminal_id=t.terminal_id, merchant_id=MERCHANT,
            code="301"))
        assert host.states.get("T1").signed_on
        _, off, _ = exchange(sock, ref.network_08x0(
            mti="0820", stan="000003", terminal_id=t.terminal_id, merchant_id=MERCHANT,
            code="002"))
    for reply, code in ((echo, "301"), (off, "002")):
        f = ref.parse_frame(reply)
        assert f.mti == "0830" and f.fields[39] == "00" and f.text(60).endswith(code)
    st = host.states.get("T1")
    assert not st.signed_on and st.keys is None
    reqs = wait_events(sink, EventKind.NET_REQ, 2)
    rsps = wait_events(sink, EventKind.NET_RSP, 2)
    assert [e.data["code"] for e in reqs] == ["301", "002"]
    assert all(e.clock is ClockSource.KERNEL and e.terminal == "T1" for e in reqs)
    assert [(e.data["mti"], e.data["rc"]) for e in rsps] == [("0830", "00")] * 2


def test_connect_disconnect_events_and_one_shot_terminal(host: AcquirerHost,
                                                          sink: ListSink) -> None:
    sock = connect(host.address)
    peer = peer_of(sock)
    exchange(sock, signon("T1"))
    sock.close()
    disc = wait_event(sink, lambda e: e.kind is EventKind.HOST_DISCONNECT)
    conn = wait_event(sink, lambda e: e.kind is EventKind.HOST_CONNECT)
    assert conn.data["peer"] == disc.data["peer"] == peer
    assert disc.data["reason"] == "peer closed" and disc.data["frames"] == 1
    assert conn.mono_ns < disc.mono_ns


def test_stop_closes_connections_and_is_idempotent(sink: ListSink) -> None:
    h = AcquirerHost(CFG, sink, listen="127.0.0.1:0").start()
    sock = connect(h.address)
    wait_event(sink, lambda e: e.kind is EventKind.HOST_CONNECT)
    t0 = time.monotonic()
    h.stop()
    assert time.monotonic() - t0 < 3.0
    h.stop()
    assert closed_by_peer(sock)
    sock.close()
    assert wait_event(sink, lambda e: e.kind is EventKind.HOST_DISCONNECT).data["reason"] == (
        "host stopped")
    with pytest.raises(OSError):
        socket.create_connection(h.address, timeout=1).close()


def test_idle_and_slow_frames_time_out(sink: ListSink) -> None:
    with AcquirerHost(lab(read_timeout_s=0.3), sink, listen="127.0.0.1:0") as h:
        idle = connect(h.address)
        slow = connect(h.address)
        slow.sendall(signon("T1")[:10])
        assert closed_by_peer(idle) and closed_by_peer(slow)
        reasons = sorted(str(e.data["reason"])
                         for e in wait_events(sink, EventKind.HOST_DISCONNECT, 2))
        assert reasons == ["idle timeout", "protocol error"]
        err = wait_event(sink, lambda e: e.kind is EventKind.PROTOCOL_ERROR)
        assert err.data["peer"] == peer_of(slow) and "0.3 s" in str(err.data["error"])
        idle.close()
        slow.close()


def test_without_kernel_stamp_falls_back_to_thread(host: AcquirerHost, sink: ListSink,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(host_timestamps, "kernel_wall_ns", lambda anc: None)
    with connect(host.address) as sock:
        before, _, after = exchange(sock, signon("T1"))
    req = wait_event(sink, lambda e: e.kind is EventKind.SIGNON_REQ)
    assert req.clock is ClockSource.THREAD and "no kernel" in str(req.data["stamp"])
    assert before <= req.mono_ns <= after


def test_iso87_dialect(sink: ListSink) -> None:
    with AcquirerHost(lab(dialect="iso87"), sink, listen="127.0.0.1:0") as h:
        with connect(h.address) as sock:
            replies = []
            for stan, code in (("000001", "001"), ("000002", "301"), ("000003", "002")):
                msg = {"t": "0800", "7": "1124120000", "11": stan, "41": "10000001",
                       "70": code}
                _, reply, _ = exchange(sock, frame(ISO87.encode(msg)))
                replies.append(ISO87.decode(reply[2:]))
        assert [(r["t"], r["39"], r["70"]) for r in replies] == [
            ("0810", "00", "001"), ("0810", "00", "301"), ("0810", "00", "002")]
        req = wait_event(sink, lambda e: e.kind is EventKind.SIGNON_REQ)
        assert req.terminal == "T1" and req.clock is ClockSource.KERNEL
        assert [e.data["code"] for e in sink.events if e.kind is EventKind.NET_REQ] == [
            "301", "002"]
        assert not h.states.get("T1").signed_on


def test_keepalive_frame_is_ignored(host: AcquirerHost, sink: ListSink) -> None:
    with connect(host.address) as sock:
        sock.sendall(b"\x00\x00")
        _, reply, _ = exchange(sock, b"\x00\x00" + signon("T1"))
    assert ref.parse_frame(reply).fields[39] == "00"
    assert not [e for e in sink.events if e.kind is EventKind.PROTOCOL_ERROR]


def test_at_the_cap_the_oldest_idle_connection_is_evicted(sink: ListSink) -> None:
    with AcquirerHost(CFG, sink, listen="127.0.0.1:0", max_connections=2) as h:
        a = connect(h.address)
        exchange(a, signon("T1"))  # served: kept over a connection that never sent a request
        b = connect(h.address)
        wait_events(sink, EventKind.HOST_CONNECT, 2)
        c = connect(h.address)
        assert closed_by_peer(b)  # never served: evicted first, though a is older
        for sock in (a, c):  # a, then c: a's last request is now the oldest
            _, reply, _ = exchange(sock, signon("T1", "000002"))
            assert ref.parse_frame(reply).fields[39] == "00"
        d = connect(h.address)
        assert closed_by_peer(a)
        _, reply, _ = exchange(d, signon("T1", "000003"))
        assert ref.parse_frame(reply).fields[39] == "00"
        evicted = [e for e in wait_events(sink, EventKind.HOST_DISCONNECT, 2)]
        assert [e.data["reason"] for e in evicted] == ["evicted", "evicted"]
        assert [e.data["peer"] for e in evicted] == [peer_of(b), peer_of(a)]
        assert h.connections == 2
        for sock in (a, b, c, d):
            sock.close()
