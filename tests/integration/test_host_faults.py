"""Host faults (DESIGN §6) injected into a real acquirer host on loopback while it serves:
each action observed on real 0800 / 0200 / 0400 / 0500 exchanges, and in the events."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from rig.cards.profiles import load_cards
from rig.config import LabConfig
from rig.core.clock import ClockSource
from rig.host import AcquirerHost
from rig.host.rules import HostFaultSpec
from rig.iso8583 import cup, decode_field62, frame, get_dialect
from rig.iso8583 import cup_txn as txn
from rig.iso8583.dialects import Message
from rig.timeline.events import Event, EventKind, ListSink
from tests import cup_reference as ref
from tests.labcfg import virtual_config

from .hostclient import closed_by_peer, connect, peer_of, recv_frame, wait_event

pytestmark = pytest.mark.integration

CUP = get_dialect("cup")
CARDS = load_cards(Path(__file__).resolve().parents[2] / "configs" / "cards")
CARD = "cup_debit"


def make_cfg(tmp_path: Path, **host: object) -> LabConfig:
    base = virtual_config(tmp_path)
    return base.model_copy(update={"host": base.host.model_copy(
        update={"processing_ms": 0.0, **host})})


@pytest.fixture
def cfg(tmp_path: Path) -> LabConfig:
    return make_cfg(tmp_path)


class Term:
    """A raw CUP terminal: sends MAC'd requests, reads reply frames (no checks of its own)."""

    def __init__(self, host: AcquirerHost, cfg: LabConfig, name: str) -> None:
        self.cfg = cfg.terminals[name]
        self.sock = connect(host.address)
        self.stan = 0
        self.mak: bytes | None = None
        self.sent_ns = 0
        self.took_s = 0.0

    def close(self) -> None:
        self.sock.close()

    def ids(self) -> dict[str, Any]:
        return {"stan": self.next_stan(), "terminal_id": self.cfg.terminal_id,
                "merchant_id": self.cfg.merchant_id, "batch": 1}

    def next_stan(self) -> int:
        self.stan += 1
        return self.stan

    def signon_msg(self) -> Message:
        kw: dict[str, Any] = self.ids()
        return cup.signon_request(**kw, key_mode=self.cfg.key_mode, operator="01")

    def sale_msg(self, amount: int = 100) -> Message:
        c = CARDS[CARD]
        kw: dict[str, Any] = self.ids()
        return txn.sale_request(**kw, amount_minor=amount, entry_mode="chip", pan=c.pan,
                                expiry=c.expiry, pan_sequence="01",
                                field55=bytes.fromhex("9F2608") + bytes(8))

    def send(self, msg: Message, mac: bool | None = None) -> None:
        mac = msg["t"] != "0800" if mac is None else mac
        body = CUP.encode(msg, mak=self.mak if mac else None)
        self.sent_ns = time.monotonic_ns()
        self.sock.sendall(frame(body))

    def read(self, timeout: float = 5.0) -> bytes:
        """One reply body (length prefix stripped)."""
        self.sock.settimeout(timeout)
        raw = recv_frame(self.sock)
        self.took_s = (time.monotonic_ns() - self.sent_ns) / 1e9
        return raw[2:]

    def call(self, msg: Message, mac: bool | None = None) -> tuple[Message, bytes]:
        self.send(msg, mac)
        body = self.read()
        ref.parse_frame(len(body).to_bytes(2, "big") + body)  # DESIGN §1 reply rules
        return CUP.decode(body), body

    def signon(self) -> Message:
        reply, _ = self.call(self.signon_msg())
        if reply["39"] == "00":
            keys = decode_field62(bytes.fromhex(self.cfg.tmk), reply["62"], self.cfg.key_mode)
            self.mak = keys.mak
        return reply

    def mac_ok(self, body: bytes) -> bool:
        assert self.mak is not None
        return CUP.verify_mac(body, self.mak)

    def nothing_pending(self, wait_s: float = 0.2) -> bool:
        self.sock.settimeout(wait_s)
        try:
            self.sock.recv(1)  # data, or EOF: something came
        except TimeoutError:
            return True
        return False


@pytest.fixture
def t1(host: AcquirerHost, cfg: LabConfig) -> Iterator[Term]:
    t = Term(host, cfg, "T1")
    assert t.signon()["39"] == "00"
    yield t
    t.close()


def rsp_of(sink: ListSink, kind: EventKind, stan: int, terminal: str = "T1") -> Event:
    return wait_event(sink, lambda e: e.kind is kind and e.terminal == terminal
                      and e.data.get("stan") == f"{stan:06d}")


def no_event(sink: ListSink, kind: EventKind, stan: int) -> bool:
    return not [e for e in list(sink.events)
                if e.kind is kind and e.data.get("stan") == f"{stan:06d}"]


# --- no_response -------------------------------------------------------------------------------

def test_no_response_once_then_recovery_on_the_same_connection(
        host: AcquirerHost, sink: ListSink, t1: Term) -> None:
    start = host.accounts.balance(CARD)
    fid = host.rules.add_fault(HostFaultSpec("no_response", terminal="T1", applies_to="auth",
                                             count=1))
    sale = t1.sale_msg(250)
    t1.send(sale)
    with pytest.raises(TimeoutError):
        t1.read(timeout=0.5)
    req = rsp_of(sink, EventKind.AUTH_REQ, t1.stan)
    assert req.clock is ClockSource.KERNEL
    assert (req.data["fault"], req.data["answered"], req.data["fault_ids"]) == (
        "no_response", False, [fid])
    assert no_event(sink, EventKind.AUTH_RSP, t1.stan)
    assert host.rules.faults() == []  # spent
    assert host.accounts.balance(CARD) == start - 250  # processed, the reply "lost"

    # the connection is still open; the withheld reply never comes, the next one does
    reply, body = t1.call(t1.sale_msg(100))
    assert reply["11"] == f"{t1.stan:06d}" and reply["39"] == "00" and t1.mac_ok(body)
    rev, rbody = t1.call(txn.reversal_request(sale))  # the terminal's reversal
    assert rev["t"] == "0410" and rev["11"] == sale["11"] and rev["39"] == "00"
    assert rsp_of(sink, EventKind.REVERSAL_RSP, int(sale["11"])).data["outcome"] == "reversed"
    assert host.accounts.balance(CARD) == start - 100
    assert t1.nothing_pending()
    assert "fault" not in rsp_of(sink, EventKind.AUTH_RSP, int(reply["11"])).data


def test_no_response_keeps_connection_open_past_idle_timeout(tmp_path: Path,
                                                             sink: ListSink) -> None:
    cfg = make_cfg(tmp_path, read_timeout_s=0.3)
    with AcquirerHost(cfg, sink, listen="127.0.0.1:0") as h:
        fid = h.rules.add_fault(HostFaultSpec("no_response", applies_to="signon"))
        t = Term(h, cfg, "T2")
        try:
            t.send(t.signon_msg())
            assert not closed_by_peer(t.sock, timeout=1.0)  # > 3 idle timeouts, no reply
            req = wait_event(sink, lambda e: e.kind is EventKind.SIGNON_REQ)
            assert req.data["fault"] == "no_response" and req.data["answered"] is False
            assert not [e for e in sink.events if e.kind in (EventKind.SIGNON_RSP,
                                                             EventKind.HOST_DISCONNECT)]
            h.rules.remove_fault(fid)
            assert t.signon()["39"] == "00"
            assert closed_by_peer(t.sock, timeout=2.0)  # answered: the idle timeout is back
        finally:
            t.close()
        disc = wait_event(sink, lambda e: e.kind is EventKind.HOST_DISCONNECT)
        assert disc.data["reason"] == "idle timeout" and disc.data["frames"] == 2


# --- close ---------------------------------------------------------------------------------------

def test_close_on_signon_gives_eof_and_records_why(host: AcquirerHost, sink: ListSink,
                                                   cfg: LabConfig) -> None:
    fid = host.rules.add_fault(HostFaultSpec("close", terminal="T1", applies_to="signon"))
    t = Term(host, cfg, "T1")
    try:
        peer = peer_of(t.sock)
        t.send(t.signon_msg())
        with pytest.raises(EOFError):
            t.read()
    finally:
        t.close()
    req = wait_event(sink, lambda e: e.kind is EventKind.SIGNON_REQ)
    assert (req.data["fault"], req.data["answered"], req.data["fault_ids"]) == (
        "close", False, [fid])
    disc = wait_event(sink, lambda e: e.kind is EventKind.HOST_DISCONNECT)
    assert (disc.data["reason"], disc.data["peer"], disc.data["frames"]) == (
        "fault close", peer, 1)
    assert not [e for e in sink.events if e.kind is EventKind.SIGNON_RSP]
    assert not host.states.get("T1").signed_on  # closed before processing


def test_close_on_sale_leaves_balance_alone(host: AcquirerHost, sink: ListSink,
                                            t1: Term) -> None:
    start = host.accounts.balance(CARD)
    host.rules.add_fault(HostFaultSpec("close", applies_to="auth"))
    t1.send(t1.sale_msg(300))
    with pytest.raises(EOFError):
        t1.read()
    assert rsp_of(sink, EventKind.AUTH_REQ, t1.stan).data["fault"] == "close"
    assert wait_event(sink, lambda e: e.kind is EventKind.HOST_DISCONNECT).data["reason"] == (
        "fault close")
    assert host.accounts.balance(CARD) == start


# --- garbage -------------------------------------------------------------------------------------

@pytest.mark.parametrize("applies_to", ["signon", "auth"])
def test_garbage_is_an_undecodable_frame(host: AcquirerHost, sink: ListSink, cfg: LabConfig,
                                         applies_to: Any) -> None:
    t = Term(host, cfg, "T1")
    try:
        if applies_to == "auth":
            assert t.signon()["39"] == "00"
        host.rules.add_fault(HostFaultSpec("garbage", applies_to=applies_to, count=1))
        msg = t.signon_msg() if applies_to == "signon" else t.sale_msg()
        t.send(msg)
        body = t.read()
        with pytest.raises(Exception):  # noqa: B017 - any decode failure will do
            CUP.decode(body)
        kind = EventKind.SIGNON_RSP if applies_to == "signon" else EventKind.AUTH_RSP
        rsp = rsp_of(sink, kind, t.stan)
        assert rsp.data["fault"] == "garbage" and rsp.data["rc"] is None
        assert rsp.data["host_rc"] == "00" and rsp.data["length"] == len(body)
        assert len(body) > (60 if applies_to == "signon" else 40)  # as long as a real reply
        t.send(t.signon_msg() if applies_to == "signon" else t.sale_msg())  # spent: valid
        assert CUP.decode(t.read())["39"] == "00"
    finally:
        t.close()


# --- bad_mac -------------------------------------------------------------------------------------

def test_bad_mac_on_sale_and_reversal_not_on_signon(host: AcquirerHost, sink: ListSink,
                                                    t1: Term) -> None:
    fid = host.rules.add_fault(HostFaultSpec("bad_mac", terminal="T1"))
    assert t1.signon()["39"] == "00"  # 0810 carries no MAC: untouched
    assert "fault" not in rsp_of(sink, EventKind.SIGNON_RSP, t1.stan).data
    sale = t1.sale_msg()
    reply, body = t1.call(sale)
    assert reply["39"] == "00" and "64" in reply and not t1.mac_ok(body)
    rsp = rsp_of(sink, EventKind.AUTH_RSP, t1.stan)
    assert (rsp.data["fault"], rsp.data["fault_ids"], rsp.data["rc"]) == ("bad_mac", [fid], "00")
    rev, rbody = t1.call(txn.reversal_request(sale))
    assert rev["t"] == "0410" and "64" in rev and not t1.mac_ok(rbody)
    assert rsp_of(sink, EventKind.REVERSAL_RSP, t1.stan).data["fault"] == "bad_mac"
    host.rules.remove_fault(fid)
    reply, body = t1.call(t1.sale_msg())
    assert reply["39"] == "00" and t1.mac_ok(body)


# --- rc ------------------------------------------------------------------------------------------

@pytest.mark.parametrize("rc", ["96", "91"])
def test_rc_on_signon(host: AcquirerHost, sink: ListSink, t1: Term, rc: str) -> None:
    host.rules.add_fault(HostFaultSpec("rc", terminal="T1", applies_to="signon", rc=rc))
    reply = t1.signon()
    assert reply["39"] == rc and "62" not in reply
    assert not host.states.get("T1").signed_on
    rsp = rsp_of(sink, EventKind.SIGNON_RSP, t1.stan)
    assert (rsp.data["rc"], rsp.data["fault"]) == (rc, "rc")


@pytest.mark.parametrize("rc", ["96", "91", "05", "A0"])
def test_rc_on_sale_goes_through_the_override_path(host: AcquirerHost, sink: ListSink,
                                                   t1: Term, rc: str) -> None:
    start = host.accounts.balance(CARD)
    host.rules.add_fault(HostFaultSpec("rc", terminal="T1", applies_to="auth", rc=rc))
    assert t1.signon()["39"] == "00"  # applies_to auth: sign-on untouched
    reply, body = t1.call(t1.sale_msg(500))
    assert reply["39"] == rc and "38" not in reply and t1.mac_ok(body)
    rsp = rsp_of(sink, EventKind.AUTH_RSP, t1.stan)
    assert (rsp.data["rc"], rsp.data["fault"], rsp.data["forced"]) == (rc, "rc", True)
    assert host.accounts.balance(CARD) == start
    rec = host.ledger.get(("T1", "000001", f"{t1.stan:06d}"))
    assert rec is not None and rec.status == "declined" and rec.forced


def test_rc_on_reversal_and_settlement_answers_without_processing(
        host: AcquirerHost, sink: ListSink, t1: Term) -> None:
    start = host.accounts.balance(CARD)
    sale = t1.sale_msg(400)
    assert t1.call(sale)[0]["39"] == "00"
    host.rules.add_fault(HostFaultSpec("rc", applies_to="reversal", rc="96", count=1))
    rev, body = t1.call(txn.reversal_request(sale))
    assert rev["t"] == "0410" and rev["39"] == "96" and t1.mac_ok(body)
    assert host.accounts.balance(CARD) == start - 400  # not reversed
    rsp = rsp_of(sink, EventKind.REVERSAL_RSP, int(sale["11"]))
    assert (rsp.data["rc"], rsp.data["fault"], rsp.data["outcome"]) == ("96", "rc", "fault")
    rev2, _ = t1.call(txn.reversal_request(sale))  # spent: processed now
    assert rev2["39"] == "00" and host.accounts.balance(CARD) == start

    host.rules.add_fault(HostFaultSpec("rc", terminal="T1", applies_to="settle", rc="96"))
    settle = txn.settlement_request(stan=t1.next_stan(), terminal_id=t1.cfg.terminal_id,
                                    merchant_id=t1.cfg.merchant_id, batch=1,
                                    totals=txn.SettlementTotals())
    rep, sbody = t1.call(settle)
    assert rep["t"] == "0510" and rep["39"] == "96" and t1.mac_ok(sbody)
    assert rsp_of(sink, EventKind.SETTLE_RSP, t1.stan).data["fault"] == "rc"


def test_rc_count_not_spent_by_a_request_answered_before_it(host: AcquirerHost,
                                                            t1: Term) -> None:
    fid = host.rules.add_fault(HostFaultSpec("rc", applies_to="auth", rc="96", count=1))
    good = t1.mak
    t1.mak = bytes(16)  # wrong MAC: A0 comes before any forced rc
    assert t1.call(t1.sale_msg())[0]["39"] == "A0"
    assert [f for f, _ in host.rules.faults()] == [fid]
    t1.mak = good
    assert t1.call(t1.sale_msg())[0]["39"] == "96"
    assert t1.call(t1.sale_msg())[0]["39"] == "00"
    assert host.rules.faults() == []


def test_rc_all_hits_echo_signon_only_does_not(host: AcquirerHost, sink: ListSink,
                                               t1: Term) -> None:
    fid = host.rules.add_fault(HostFaultSpec("rc", applies_to="signon", rc="96"))
    echo = cup.echo_request(**t1.ids())
    assert t1.call(echo, mac=False)[0]["39"] == "00"
    host.rules.remove_fault(fid)
    host.rules.add_fault(HostFaultSpec("rc", rc="91"))
    assert t1.call(cup.echo_request(**t1.ids()), mac=False)[0]["39"] == "91"
    rsp = rsp_of(sink, EventKind.NET_RSP, t1.stan)
    assert (rsp.data["rc"], rsp.data["fault"]) == ("91", "rc")


# --- delays --------------------------------------------------------------------------------------

def test_slow_signon_delays_0810_not_0210(host: AcquirerHost, sink: ListSink,
                                          t1: Term) -> None:
    host.rules.add_fault(HostFaultSpec("slow_signon", terminal="T1", ms=300))
    assert t1.signon()["39"] == "00"
    assert t1.took_s >= 0.3
    req = rsp_of(sink, EventKind.SIGNON_REQ, t1.stan)
    rsp = rsp_of(sink, EventKind.SIGNON_RSP, t1.stan)
    assert (rsp.mono_ns - req.mono_ns) / 1e9 >= 0.3
    assert (rsp.data["fault"], rsp.data["fault_delay_ms"]) == ("slow_signon", 300.0)
    assert t1.call(t1.sale_msg())[0]["39"] == "00"
    assert t1.took_s < 0.2
    assert "fault" not in rsp_of(sink, EventKind.AUTH_RSP, t1.stan).data


def test_delay_adds_to_processing_time_of_matching_requests(host: AcquirerHost,
                                                            sink: ListSink, t1: Term) -> None:
    host.rules.add_fault(HostFaultSpec("delay", applies_to="auth", ms=250))
    assert t1.call(t1.sale_msg())[0]["39"] == "00"
    assert t1.took_s >= 0.25
    rsp = rsp_of(sink, EventKind.AUTH_RSP, t1.stan)
    req = rsp_of(sink, EventKind.AUTH_REQ, t1.stan)
    assert (rsp.mono_ns - req.mono_ns) / 1e9 >= 0.25 and rsp.data["fault"] == "delay"
    assert t1.signon()["39"] == "00" and t1.took_s < 0.2


# --- scoping and removal -------------------------------------------------------------------------

def test_terminal_scope_and_remove(host: AcquirerHost, sink: ListSink, cfg: LabConfig) -> None:
    t1, t2 = Term(host, cfg, "T1"), Term(host, cfg, "T2")
    try:
        fid = host.rules.add_fault(HostFaultSpec("rc", terminal="T1", applies_to="signon",
                                                 rc="96"))
        assert t1.signon()["39"] == "96"
        assert t2.signon()["39"] == "00"  # another terminal: unaffected
        assert "fault" not in rsp_of(sink, EventKind.SIGNON_RSP, t2.stan, "T2").data
        host.rules.remove_fault(fid)
        host.rules.remove_fault(fid)  # idempotent
        assert t1.signon()["39"] == "00"
        every = host.rules.add_fault(HostFaultSpec("rc", applies_to="signon", rc="91"))
        assert t1.signon()["39"] == "91" and t2.signon()["39"] == "91"
        assert host.rules.faults() == [(every, HostFaultSpec("rc", applies_to="signon",
                                                             rc="91"))]
        host.rules.clear()
        assert host.rules.faults() == []
        assert t1.signon()["39"] == "00" and t2.signon()["39"] == "00"
    finally:
        t1.close()
        t2.close()
