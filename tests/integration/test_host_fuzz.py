"""Hostile bytes at the acquirer host: each bad connection gets a PROTOCOL_ERROR and is closed,
while a terminal on another connection keeps signing on."""

from __future__ import annotations

import socket
from collections.abc import Iterator

import pytest
from hypothesis import HealthCheck, assume, example, given, settings
from hypothesis import strategies as st

from rig.host import AcquirerHost
from rig.timeline.events import EventKind, ListSink
from tests import cup_reference as ref

from .hostclient import closed_by_peer, connect, exchange, lab, peer_of, wait_event

pytestmark = pytest.mark.integration

CFG = lab(processing_ms=0, read_timeout_s=10)
T1 = CFG.terminals["T1"]
SIGNON = ref.signon_0800(stan="000001", terminal_id=T1.terminal_id,
                         merchant_id=T1.merchant_id, key_mode=T1.key_mode)
FUZZ = settings(max_examples=50, deadline=None,
                suppress_health_check=[HealthCheck.function_scoped_fixture])
ALLOWED_ERROR_KEYS = {"peer", "error", "length", "mti"}


class Rig:
    def __init__(self) -> None:
        self.sink = ListSink()
        self.host = AcquirerHost(CFG, self.sink, listen="127.0.0.1:0").start()
        self.good = connect(self.host.address)  # a terminal that stays connected throughout
        self.stan = 0

    def good_signon_still_works(self) -> None:
        """The long-lived terminal and a fresh one both still get rc 00."""
        self.stan += 1
        for sock in (self.good, connect(self.host.address)):
            msg = ref.signon_0800(stan=f"{self.stan % 1_000_000:06d}",
                                  terminal_id=T1.terminal_id, merchant_id=T1.merchant_id,
                                  key_mode=T1.key_mode)
            _, reply, _ = exchange(sock, msg)
            assert ref.parse_frame(reply).fields[39] == "00"
            if sock is not self.good:
                sock.close()

    def assert_rejected(self, payload: bytes, half_close: bool = True,
                        mti: str | None = None) -> None:
        since = len(self.sink.events)  # ports get reused: only look at this attempt's events
        with connect(self.host.address) as sock:
            peer = peer_of(sock)
            try:
                sock.sendall(payload)
                if half_close:
                    sock.shutdown(socket.SHUT_WR)
            except OSError:  # EPIPE, ECONNRESET, ENOTCONN: the host already closed (early error)
                pass
            assert closed_by_peer(sock), "host kept a bad connection open"
        err = wait_event(self.sink, lambda e: e.kind is EventKind.PROTOCOL_ERROR
                         and e.data.get("peer") == peer, since=since)
        assert set(err.data) <= ALLOWED_ERROR_KEYS and err.terminal is None
        assert payload.hex() not in str(err.data) or len(payload) < 4
        if mti is not None:
            assert err.data.get("mti") == mti
        disc = wait_event(self.sink, lambda e: e.kind is EventKind.HOST_DISCONNECT
                          and e.data.get("peer") == peer, since=since)
        assert disc.data["reason"] == "protocol error"
        self.good_signon_still_works()

    def close(self) -> None:
        self.good.close()
        self.host.stop()
        assert not [e for e in self.sink.events if e.kind is EventKind.ERROR]


@pytest.fixture(scope="module")
def rig() -> Iterator[Rig]:
    r = Rig()
    yield r
    r.close()


@FUZZ
@given(st.binary(min_size=1, max_size=300))
@example(b"\x00")
@example(b"\xff\xff" + bytes(10))
def test_random_bytes(rig: Rig, payload: bytes) -> None:
    assume(payload[:2] != b"\x00\x00")  # a zero-length frame is a valid keep-alive
    rig.assert_rejected(payload)


@FUZZ
@given(st.binary(min_size=1, max_size=300))
@example(bytes(21))
@example(bytes.fromhex("600003000060310031000008") + bytes(8))
def test_random_framed_body(rig: Rig, body: bytes) -> None:
    rig.assert_rejected(len(body).to_bytes(2, "big") + body)


@FUZZ
@given(st.integers(min_value=1, max_value=0xFFFF))
@example(8193)
@example(len(SIGNON) - 3)
def test_wrong_length_prefix(rig: Rig, length: int) -> None:
    assume(length != len(SIGNON) - 2)
    rig.assert_rejected(length.to_bytes(2, "big") + SIGNON[2:])


@FUZZ
@given(st.integers(min_value=1, max_value=len(SIGNON) - 1))
def test_truncated_frame_then_close(rig: Rig, cut: int) -> None:
    rig.assert_rejected(SIGNON[:cut])


@FUZZ
@given(st.sampled_from(["0200", "0100", "0400", "0500", "0810", "0830", "0000", "9999",
                        "0820"]))
def test_unexpected_mti(rig: Rig, mti: str) -> None:
    fields: dict[int, str | bytes] = {11: "000001", 41: T1.terminal_id,
                                      42: T1.merchant_id, 60: "00000001" + (
                                          "999" if mti == "0820" else "003")}
    frame = ref.encode_frame(bytes.fromhex("6000030000"), bytes.fromhex("603100310000"),
                             mti, fields)
    rig.assert_rejected(frame, half_close=False, mti=mti)
