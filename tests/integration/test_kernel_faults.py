"""Kernel (L3) faults observed on real traffic between two network namespaces.

The rig side (``pair.rig``, where the faults go) serves TCP / UDP on 10.77.0.1; the terminal
side (``pair.term``) connects over a veth. Needs root: skips elsewhere, fails under CI=true.
"""

from __future__ import annotations

import contextlib
import gzip
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from rig.core import netns
from rig.core.errors import InfrastructureError, TestError
from rig.faults.kernel import (
    QDISC_MAJOR,
    KernelFaults,
    Match,
    NotSupported,
    probe,
)
from tests.netnsfix import (  # noqa: F401  (nspair_fixture provides the fixture nspair)
    NsPair,
    link_info,
    nft_tables,
    nspair_fixture,
    require_netadmin,
    udp_round,
)

ROOT = Path(__file__).resolve().parents[2]
PORT = 7000
UPORT = 7001


@pytest.fixture
def kf(nspair: NsPair):
    k = KernelFaults(nspair.rig)
    yield k
    k.close()


def test_probe_is_honest() -> None:
    require_netadmin()
    caps = probe()
    assert caps.net_admin and caps.nft and caps.tbf, caps.reason
    try:
        text = gzip.open("/proc/config.gz", "rt").read()
    except OSError:
        text = None
    if text is not None and "CONFIG_NET_SCH_NETEM" in text:
        built = "CONFIG_NET_SCH_NETEM=y" in text or "CONFIG_NET_SCH_NETEM=m" in text
        assert caps.netem == built, caps.reason
    if caps.netem:
        assert "sch_netem" not in caps.reason
    else:
        assert "sch_netem" in caps.reason and "modprobe sch_netem" in caps.reason
    assert probe() is caps  # cached
    assert not netns.names("rigprobe"), "the probe's throwaway namespace was left behind"


def test_loss_100_lets_nothing_through(nspair: NsPair, kf: KernelFaults) -> None:
    nspair.tcp_server(PORT)
    nspair.udp_echo(UPORT)
    assert nspair.can_connect(PORT)
    h = kf.loss("all", 100, Match(iface=nspair.rig_if, addr=nspair.term_ip))
    assert "rig_all" in nft_tables(nspair.rig)
    t0 = time.monotonic()
    with pytest.raises(TimeoutError):
        nspair.connect(PORT, 0.3)
    assert time.monotonic() - t0 >= 0.29
    assert udp_round(nspair, UPORT, 20, wait=0.2) == set()
    kf.undo(h)
    assert "rig_all" not in nft_tables(nspair.rig)
    assert nspair.can_connect(PORT)
    assert len(udp_round(nspair, UPORT, 20)) == 20


@pytest.mark.parametrize(("direction", "lo", "hi"), [("in", 0.58, 0.82), ("both", 0.37, 0.61)])
def test_loss_30_percent_drops_about_that_many(nspair: NsPair, kf: KernelFaults, direction: str,
                                               lo: float, hi: float) -> None:
    """400 datagrams: each way drops 30 % (5 sigma bounds; a clean control round first)."""
    n = 400
    echo = nspair.udp_echo(UPORT)
    assert len(udp_round(nspair, UPORT, n)) == n  # no drops without the fault
    echo.received = 0
    kf.loss("thirty", 30, Match(port=UPORT, direction=direction))  # type: ignore[arg-type]
    got = len(udp_round(nspair, UPORT, n))
    assert 0.58 * n <= echo.received <= 0.82 * n  # the way in drops 30 % in both cases
    assert lo * n <= got <= hi * n, (got, echo.received)


def test_blackhole_stalls_then_recovers(nspair: NsPair, kf: KernelFaults) -> None:
    nspair.tcp_server(PORT)
    c = nspair.connect(PORT, 1.0)
    c.sendall(b"a")
    assert c.recv(1) == b"a"
    h = kf.blackhole("hole", Match(port=PORT))
    c.settimeout(0.3)
    c.sendall(b"b")
    with pytest.raises(TimeoutError):
        c.recv(1)
    with pytest.raises(TimeoutError):
        nspair.connect(PORT, 0.3)
    kf.undo(h)
    c.settimeout(3.0)
    assert c.recv(1) == b"b"  # TCP retransmits what the blackhole ate
    assert nspair.can_connect(PORT)


def test_reject_refuses_and_resets_quickly(nspair: NsPair, kf: KernelFaults) -> None:
    nspair.tcp_server(PORT)
    c = nspair.connect(PORT, 1.0)
    h = kf.reject("nope", Match(addr=nspair.term_ip, port=PORT, direction="in"))
    t0 = time.monotonic()
    with pytest.raises(ConnectionRefusedError):
        nspair.connect(PORT, 2.0)
    assert time.monotonic() - t0 < 0.2
    c.settimeout(2.0)
    c.sendall(b"x")
    with pytest.raises((ConnectionResetError, BrokenPipeError)):
        c.recv(1)
    kf.undo(h)
    assert nspair.can_connect(PORT)


def test_link_down_then_undo(nspair: NsPair, kf: KernelFaults) -> None:
    nspair.tcp_server(PORT)
    assert nspair.can_connect(PORT)
    h = kf.link_down(nspair.rig_if)
    info = link_info(nspair.rig, nspair.rig_if)
    assert not info["up"] and info["alias"].startswith("rig-fault:down")
    assert not nspair.can_connect(PORT, 0.3)
    kf.undo(h)
    kf.undo(h)  # idempotent
    info = link_info(nspair.rig, nspair.rig_if)
    assert info["up"] and info["alias"] == ""
    nspair.wait_connect(PORT)


def test_link_down_keeps_the_previous_alias(nspair: NsPair, kf: KernelFaults) -> None:
    subprocess.run(["ip", "-n", nspair.rig, "link", "set", nspair.rig_if, "alias", "to-pos-7"],
                   check=True)
    h = kf.link_down(nspair.rig_if)
    assert link_info(nspair.rig, nspair.rig_if)["alias"] == "rig-fault:down|to-pos-7"
    kf.undo(h)
    assert link_info(nspair.rig, nspair.rig_if)["alias"] == "to-pos-7"


def test_flap_toggles_traffic_and_undo_leaves_it_up(nspair: NsPair, kf: KernelFaults) -> None:
    """UDP probes every ~20 ms fail while the link is down and get through while it is up.

    Taking the link down shows at once; the kernel passes carrier-up on at most once a second
    (linkwatch), so the up phase is 1.5 s (a shorter one can be missed) and the probes are
    judged against the flapper's own recorded edges."""
    nspair.udp_echo(UPORT)
    assert len(udp_round(nspair, UPORT, 5, wait=2.0)) == 5  # the fresh veth carries traffic
    c = nspair.udp_client()
    h = kf.flap(nspair.rig_if, down_s=0.3, up_s=1.5)
    rec = kf.records[-1]
    assert link_info(nspair.rig, nspair.rig_if)["alias"].startswith("rig-fault:flap")
    probes: list[tuple[int, bool]] = []
    c.settimeout(0.02)
    deadline = time.monotonic() + 5
    while len(rec.edges) < 3 or time.monotonic_ns() < rec.edges[2][1].mono_ns + 200_000_000:
        assert time.monotonic() < deadline, rec.edges
        t = time.monotonic_ns()
        seq = len(probes).to_bytes(4, "big")
        c.sendto(seq, (nspair.rig_ip, UPORT))
        ok = False
        with contextlib.suppress(TimeoutError):
            while not ok:
                ok = c.recv(8) == seq  # a late answer to an earlier probe does not count
        probes.append((t, ok))
        time.sleep(0.01 if ok else 0)
    (d1, down1), (u, up), (d2, down2) = rec.edges[:3]
    assert (d1, u, d2) == ("down", "up", "down")
    assert 0.25 < (up.mono_ns - down1.mono_ns) / 1e9 < 0.45
    slack = 20_000_000  # a probe sent just before an edge may still be answered
    in_down = [ok for t, ok in probes if down1.mono_ns + slack < t < up.mono_ns
               or t > down2.mono_ns + slack]
    in_up = [ok for t, ok in probes if up.mono_ns < t < down2.mono_ns]
    trace = [(round((t - down1.mono_ns) / 1e6), ok) for t, ok in probes]
    assert in_down and not any(in_down), (trace, rec.edges)
    assert any(in_up), (trace, rec.edges)
    kf.undo(h)
    assert not [t for t in threading.enumerate() if t.name == f"flap-{nspair.rig_if}"]
    assert rec.edges[-1][0] == "up"
    info = link_info(nspair.rig, nspair.rig_if)
    assert info["up"] and info["alias"] == ""
    deadline = time.monotonic() + 2.0  # the last carrier change may wait for linkwatch
    while len(udp_round(nspair, UPORT, 10, wait=0.1)) < 10:
        assert time.monotonic() < deadline, "no traffic after the flap was undone"


def _download(pair: NsPair, port: int, size: int) -> float:
    """Bytes per second of one download of ``size`` bytes, from its first byte to its last."""
    c = pair.connect(port, 5.0)
    c.settimeout(10)
    first = c.recv(65536)
    t0 = time.monotonic()
    n = 0
    while chunk := c.recv(65536):
        n += len(chunk)
    dt = time.monotonic() - t0
    c.close()
    assert n + len(first) == size
    return n / dt


def test_rate_shapes_throughput(nspair: NsPair, kf: KernelFaults) -> None:
    size = 1_200_000
    nspair.tcp_server(PORT, blast=size)
    free = _download(nspair, PORT, size)
    h = kf.rate(nspair.rig_if, kbit=8000)
    info = link_info(nspair.rig, nspair.rig_if)
    assert info["qdisc"] == "tbf" and info["qhandle"] == f"{QDISC_MAJOR:x}:"
    shaped = _download(nspair, PORT, size)
    assert 0.8e6 <= shaped <= 1.1e6, shaped  # 8000 kbit/s = 1 MB/s
    assert free > 5 * shaped
    kf.undo(h)
    assert link_info(nspair.rig, nspair.rig_if)["qhandle"] != f"{QDISC_MAJOR:x}:"


def test_rate_refuses_a_foreign_root_qdisc(nspair: NsPair, kf: KernelFaults) -> None:
    subprocess.run(["ip", "netns", "exec", nspair.rig, "tc", "qdisc", "add", "dev", nspair.rig_if,
                    "root", "handle", "42:", "tbf", "rate", "1mbit", "burst", "32kb", "latency",
                    "50ms"], check=True)
    with pytest.raises(TestError, match="42:"):
        kf.rate(nspair.rig_if, 1000)
    assert link_info(nspair.rig, nspair.rig_if)["qhandle"] == "42:"


def test_netem_matches_the_probe(nspair: NsPair, kf: KernelFaults) -> None:
    caps = probe(nspair.rig)
    nspair.udp_echo(UPORT)
    if not caps.netem:
        with pytest.raises(NotSupported, match="sch_netem") as e:
            kf.netem(nspair.rig_if, delay_ms=100)
        assert isinstance(e.value, InfrastructureError)
        assert link_info(nspair.rig, nspair.rig_if)["qdisc"] != "netem"
        assert not kf.records
        return
    c = nspair.udp_client()
    c.settimeout(2)

    def rtt() -> float:
        t0 = time.monotonic()
        c.sendto(b"?", (nspair.rig_ip, UPORT))
        c.recv(8)
        return time.monotonic() - t0

    h = kf.netem(nspair.rig_if, delay_ms=100)
    assert min(rtt() for _ in range(3)) >= 0.095
    kf.undo(h)
    assert min(rtt() for _ in range(3)) < 0.02


def test_unknown_iface_is_named_and_nothing_changes(nspair: NsPair, kf: KernelFaults) -> None:
    with pytest.raises(TestError, match="'nope0'") as e:
        kf.loss("x", 10, Match(iface="nope0"))
    assert "rig0" in str(e.value)  # says what there is
    with pytest.raises(TestError, match="'nope0'"):
        kf.link_down("nope0")
    with pytest.raises(TestError, match="'nope0'"):
        kf.rate("nope0", 100)
    assert nft_tables(nspair.rig) == []
    assert kf.records == []


def test_missing_namespace_is_an_infrastructure_error() -> None:
    require_netadmin()
    name = f"rigt{os.getpid()}_missing"
    k = KernelFaults(name)
    with pytest.raises(InfrastructureError, match="does not exist"):
        k.loss("x", 10, Match(port=1))
    with pytest.raises(InfrastructureError, match="does not exist"):
        k.link_down("eth0")
    assert not netns.exists(name)  # never created by the attempt


def test_same_name_twice_is_refused_and_undo_all_clears(nspair: NsPair) -> None:
    with KernelFaults(nspair.rig) as k:
        k.loss("a", 5, Match(port=PORT))
        with pytest.raises(TestError, match="already active"):
            k.blackhole("a", Match(port=PORT))
        k.reject("b", Match(port=PORT))
        k.link_down(nspair.rig_if)
        k.rate(nspair.rig_if, 500)
        with pytest.raises(TestError, match="already has"):
            k.flap(nspair.rig_if, 1, 1)
        assert sorted(nft_tables(nspair.rig)) == ["rig_a", "rig_b"]
    assert nft_tables(nspair.rig) == []
    info = link_info(nspair.rig, nspair.rig_if)
    assert info["up"] and info["alias"] == "" and info["qhandle"] != f"{QDISC_MAJOR:x}:"
    t = k.timings()
    assert set(t) == {"loss", "reject", "link_down", "rate"}
    for kind, d in t.items():
        assert len(d["setup_ms"]) == len(d["teardown_ms"]) == 1, kind
        assert 0 < d["setup_ms"][0] < 2000 and 0 < d["teardown_ms"][0] < 2000
    assert all(r.off is not None and r.off.mono_ns > r.on.mono_ns for r in k.records)


def test_a_leftover_table_of_the_same_name_is_replaced(nspair: NsPair, kf: KernelFaults) -> None:
    nspair.tcp_server(PORT)
    subprocess.run(["ip", "netns", "exec", nspair.rig, "nft", "-f", "-"], check=True, text=True,
                   input="table inet rig_old {\n chain c_in {\n"
                         "  type filter hook input priority 0; policy accept;\n"
                         "  tcp dport 7000 drop\n }\n}\n")
    assert not nspair.can_connect(PORT)
    h = kf.loss("old", 1, Match(port=PORT + 1))  # a different, harmless rule
    assert nspair.can_connect(PORT)  # the leftover rule is gone
    kf.undo(h)
    assert nft_tables(nspair.rig) == []


def test_undo_after_the_namespace_is_gone(nspair: NsPair) -> None:
    """A virtual lab torn down first took its faults with it: undo just records the off edge."""
    k = KernelFaults(nspair.rig)
    handles = [k.loss("gone", 10, Match(port=PORT)), k.flap(nspair.rig_if, 0.5, 1.5)]
    netns.delete(nspair.rig)
    for h in handles:
        k.undo(h)
    k.close()
    assert all(r.off is not None for r in k.records)


def test_undo_of_a_bad_handle() -> None:
    with pytest.raises(TestError, match="handle"):
        KernelFaults().undo("bogus")


CRASHER = """
import sys, time
from rig.faults.kernel import KernelFaults, Match
ns, port = sys.argv[1], int(sys.argv[2])
k = KernelFaults(ns)
k.loss("crash_loss", 50, Match(port=port))
k.blackhole("crash_hole", Match(addr="10.77.9.9"))
k.reject("crash_rej", Match(iface="rig0", direction="out"))
k.link_down("rig1")
k.flap("rig2", 0.05, 0.05)
k.rate("rig0", 2000)
print("ready", flush=True)
time.sleep(60)
"""


def test_sweep_after_a_crash_removes_everything(nspair: NsPair) -> None:
    nspair.add_link(1)
    nspair.add_link(2)
    nspair.tcp_server(PORT, ip="0.0.0.0")
    proc = subprocess.Popen([sys.executable, "-c", CRASHER, nspair.rig, str(PORT)], cwd=ROOT,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        assert "ready" in line, proc.stderr.read() if proc.stderr else ""
        time.sleep(0.12)  # let the flapper take rig2 down and up
    finally:
        proc.send_signal(signal.SIGKILL)  # a crash: nothing is undone
        proc.wait(5)
    assert sorted(nft_tables(nspair.rig)) == ["rig_crash_hole", "rig_crash_loss", "rig_crash_rej"]
    assert not link_info(nspair.rig, "rig1")["up"]
    assert not nspair.can_connect(PORT, 0.3)

    lines = KernelFaults(nspair.rig).sweep()
    text = "\n".join(lines)
    for table in ("rig_crash_loss", "rig_crash_hole", "rig_crash_rej"):
        assert f"nft: deleted table inet {table} (posrig " in text
    assert "link rig1: set up, mark 'rig-fault:down' cleared" in lines
    assert "link rig2: set up, mark 'rig-fault:flap' cleared" in lines
    assert f"qdisc tbf {QDISC_MAJOR:x}: on rig0: deleted" in lines
    assert len(lines) == 6, lines

    assert nft_tables(nspair.rig) == []
    for ifname in ("rig0", "rig1", "rig2"):
        info = link_info(nspair.rig, ifname)
        assert info["up"] and info["alias"] == "", (ifname, info)
        assert info["qhandle"] != f"{QDISC_MAJOR:x}:"
    for ip in (nspair.rig_ip, "10.77.1.1", "10.77.2.1"):
        nspair.wait_connect(PORT, ip=ip)
    assert KernelFaults(nspair.rig).sweep() == []


def test_netns_helpers(nspair: NsPair) -> None:
    """A socket made by socket_in lives in its namespace: it can bind the rig's address there."""
    s = netns.socket_in(nspair.rig)
    with contextlib.closing(s):
        s.bind((nspair.rig_ip, 0))
    here = socket.socket()
    with contextlib.closing(here), pytest.raises(OSError):
        here.bind((nspair.rig_ip, 0))
    assert netns.run_in(nspair.term, lambda: Path("/proc/thread-self/net/dev").read_text()).count(
        nspair.term_if) == 1
    assert {nspair.rig, nspair.term} <= set(netns.names("rigt"))
