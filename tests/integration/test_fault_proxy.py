"""The L4 fault proxy over real loopback TCP: every toxic observed on real traffic.

Servers run in threads of the test process; timings are taken with kernel stamps at both ends
(TX: SO_TIMESTAMPING on the sender, RX: SO_TIMESTAMPNS on the receiver), so the test thread's
own scheduling does not blur them.
"""

from __future__ import annotations

import socket
import statistics
import threading
import time
from collections.abc import Callable, Iterator

import pytest

from rig.core.clock import WallToMono
from rig.core.errors import InfrastructureError
from rig.core.netstamp import (
    StampedReader,
    enable_rx_timestamps,
    enable_tx_timestamps,
    send_stamped,
)
from rig.faults.proxy import FaultProxy, ProxyLoop, Toxic, shared_loop
from rig.timeline.events import EventKind, ListSink
from tests.labcfg import free_port

pytestmark = pytest.mark.integration

MAPPER = WallToMono()
MSG = 64
FAST = 0.025  # s: a round trip with no toxic (median; generous for a loaded CI machine)


class Server:
    """A loopback TCP server; ``handler(conn, server)`` runs in a thread per connection."""

    def __init__(self, handler: Callable[[socket.socket, Server], None]) -> None:
        self.handler = handler
        self.port = free_port()
        self.sock = socket.socket()
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind(("127.0.0.1", self.port))
        self.sock.listen(64)
        self.conns: list[socket.socket] = []
        self.log: list[object] = []  # whatever handlers record
        self.accepted = threading.Event()
        self._stop = False
        threading.Thread(target=self._accept, daemon=True).start()

    @property
    def addr(self) -> str:
        return f"127.0.0.1:{self.port}"

    def _accept(self) -> None:
        while not self._stop:
            try:
                c, _ = self.sock.accept()
            except OSError:
                return
            c.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            enable_rx_timestamps(c)
            self.conns.append(c)
            self.accepted.set()
            threading.Thread(target=self._run, args=(c,), daemon=True).start()

    def _run(self, c: socket.socket) -> None:
        try:
            self.handler(c, self)
        except OSError as e:
            self.log.append(e)
        finally:
            c.close()

    def close(self) -> None:
        self._stop = True
        self.sock.close()
        for c in self.conns:
            c.close()


def echo(c: socket.socket, srv: Server) -> None:
    while data := c.recv(65536):
        c.sendall(data)


def stamp_echo(c: socket.socket, srv: Server) -> None:
    """Echo MSG-byte messages; log (kernel RX stamp, kernel TX stamp of the reply)."""
    enable_tx_timestamps(c)
    reader = StampedReader(c, MAPPER, idle_timeout_s=30, frame_timeout_s=30)
    while True:
        reader.begin_frame()
        data = reader.read_exactly(MSG)
        if len(data) < MSG:
            return
        assert reader.last is not None
        rx = reader.last.mono_ns
        tx = send_stamped(c, data, MAPPER).mono_ns
        srv.log.append((rx, tx))


def collect(c: socket.socket, srv: Server) -> None:
    """Read until EOF; log (monotonic ns after recv, chunk) and finally ("eof", ns)."""
    while True:
        data = c.recv(65536)
        if not data:
            srv.log.append(("eof", time.monotonic_ns()))
            return
        srv.log.append((time.monotonic_ns(), data))


def reply_after_eof(c: socket.socket, srv: Server) -> None:
    """Read to EOF, note when it came, then answer with the byte count (half-close)."""
    n = 0
    while data := c.recv(65536):
        n += len(data)
    srv.log.append(("eof", time.monotonic_ns()))
    c.sendall(b"got %d" % n)


@pytest.fixture
def servers() -> Iterator[Callable[..., Server]]:
    made: list[Server] = []

    def make(handler: Callable[[socket.socket, Server], None] = echo) -> Server:
        s = Server(handler)
        made.append(s)
        return s

    yield make
    for s in made:
        s.close()


@pytest.fixture
def proxies() -> Iterator[Callable[..., FaultProxy]]:
    made: list[FaultProxy] = []

    def make(upstream: Server | str, **kw: object) -> FaultProxy:
        up = upstream if isinstance(upstream, str) else upstream.addr
        p = FaultProxy("T1.proxy", f"127.0.0.1:{free_port()}", up, terminal="T1", **kw).start()
        made.append(p)
        return p

    yield make
    for p in made:
        p.stop()


def connect(p: FaultProxy, timeout: float = 5.0) -> socket.socket:
    c = socket.create_connection(p.address, timeout=timeout)
    c.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return c


def recv_exactly(c: socket.socket, n: int) -> bytes:
    buf = b""
    while len(buf) < n:
        d = c.recv(n - len(buf))
        if not d:
            break
        buf += d
    return buf


def rtt(c: socket.socket, n: int = 1) -> float:
    """Seconds for n echo round trips of MSG bytes (median)."""
    times = []
    for _ in range(n):
        t = time.monotonic()
        c.sendall(bytes(MSG))
        assert recv_exactly(c, MSG) == bytes(MSG)
        times.append(time.monotonic() - t)
    return statistics.median(times)


class StampClient:
    """Sends MSG-byte messages to a stamp_echo server; one-way times from kernel stamps."""

    def __init__(self, p: FaultProxy) -> None:
        self.c = connect(p)
        enable_rx_timestamps(self.c)
        enable_tx_timestamps(self.c)
        self.reader = StampedReader(self.c, MAPPER, idle_timeout_s=5, frame_timeout_s=5)
        self.sent: list[tuple[int, int]] = []  # (client TX, client RX of the reply)

    def exchange(self, i: int) -> None:
        tx = send_stamped(self.c, i.to_bytes(4, "big") * (MSG // 4), MAPPER).mono_ns
        self.reader.begin_frame()
        assert len(self.reader.read_exactly(MSG)) == MSG
        assert self.reader.last is not None
        self.sent.append((tx, self.reader.last.mono_ns))

    def one_way_ms(self, srv: Server) -> tuple[list[float], list[float]]:
        """(up, down) one-way times in ms, message by message."""
        assert wait_until(lambda: len(srv.log) >= len(self.sent))  # the server logs after TX
        logged = [x for x in srv.log if isinstance(x, tuple)]
        assert len(logged) == len(self.sent)
        up = [(s_rx - c_tx) / 1e6 for (c_tx, _), (s_rx, _) in zip(self.sent, logged, strict=True)]
        down = [(c_rx - s_tx) / 1e6 for (_, c_rx), (_, s_tx) in zip(self.sent, logged, strict=True)]
        return up, down


def wait_until(cond: Callable[[], bool], timeout: float = 3.0) -> bool:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if cond():
            return True
        time.sleep(0.005)
    return cond()


def closed_by_peer(c: socket.socket, timeout: float = 2.0) -> str:
    """"eof", "reset" or "open" (nothing within the timeout)."""
    c.settimeout(timeout)
    try:
        while True:
            if not c.recv(65536):
                return "eof"
    except ConnectionResetError:
        return "reset"
    except TimeoutError:
        return "open"


# --- plain forwarding ----------------------------------------------------------------------------

def test_forwards_both_ways_and_counts(servers, proxies):
    p = proxies(servers())
    c = connect(p)
    big = bytes(range(256)) * 4096  # 1 MiB: partial sends and back-pressure
    done = threading.Event()
    got = bytearray()

    def read() -> None:
        while len(got) < len(big):
            d = c.recv(65536)
            if not d:
                break
            got.extend(d)
        done.set()

    threading.Thread(target=read, daemon=True).start()
    c.sendall(big)
    assert done.wait(10) and bytes(got) == big
    assert rtt(c, 20) < FAST
    total = len(big) + 20 * MSG  # counted right after send() returns: may trail the reader
    assert wait_until(lambda: p.stats()["bytes_down"] == total)
    st = p.stats()
    assert st["connections_total"] == 1 and st["connections_live"] == 1
    assert st["bytes_up"] == st["bytes_down"] == total
    c.close()
    assert wait_until(lambda: p.stats()["connections_live"] == 0)


def test_half_close_propagates_each_direction(servers, proxies):
    srv = servers(reply_after_eof)
    p = proxies(srv)
    c = connect(p)
    c.sendall(b"x" * 1000)
    c.shutdown(socket.SHUT_WR)  # EOF up; the host still answers down
    assert c.recv(100) == b"got 1000"
    assert closed_by_peer(c) == "eof"
    assert wait_until(lambda: p.stats()["connections_live"] == 0)


def test_tcp_nodelay_and_many_connections(servers, proxies):
    p = proxies(servers())
    conns = [connect(p) for _ in range(16)]
    for c in conns:
        assert rtt(c, 3) < FAST  # Nagle + delayed ACK would show 40 ms
    assert p.stats()["connections_total"] == 16


# --- latency ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("direction", ["up", "down", "both"])
def test_latency_adds_what_was_asked_within_1ms(servers, proxies, direction):
    srv = servers(stamp_echo)
    p = proxies(srv)
    p.add(Toxic("latency", direction=direction, latency_ms=20))
    cl = StampClient(p)
    for i in range(15):
        cl.exchange(i)
    up, down = cl.one_way_ms(srv)
    for leg, ms in (("up", up), ("down", down)):
        asked = 20.0 if direction in (leg, "both") else 0.0
        errors = sorted(abs(x - asked) for x in ms)
        # all but one message within ±1 ms (one VM scheduling hiccup allowed), median ≤ 0.3 ms
        assert errors[-2] <= 1.0, (leg, ms)
        assert statistics.median(errors) <= 0.3, (leg, ms)


def test_jitter_spreads_delays_within_bounds(servers, proxies):
    srv = servers(stamp_echo)
    p = proxies(srv)
    p.add(Toxic("latency", direction="up", latency_ms=15, jitter_ms=10))
    cl = StampClient(p)
    for i in range(30):
        cl.exchange(i)
    up, _ = cl.one_way_ms(srv)
    assert all(5.0 - 0.2 <= x <= 25.0 + 1.0 for x in up), up
    assert min(up) < 10 and max(up) > 20
    assert statistics.pstdev(up) > 3  # uniform ±10 ms: sd ≈ 5.8 ms


def test_latency_never_reorders(servers, proxies):
    srv = servers(collect)
    p = proxies(srv)
    p.add(Toxic("latency", direction="up", latency_ms=30, jitter_ms=29))
    c = connect(p)
    t0 = time.monotonic_ns()
    payload = b"".join(i.to_bytes(2, "big") for i in range(200))
    for i in range(0, len(payload), 8):
        c.sendall(payload[i:i + 8])
        time.sleep(0.0005)
    c.shutdown(socket.SHUT_WR)
    assert wait_until(lambda: srv.log and srv.log[-1][0] == "eof")
    data = b"".join(x[1] for x in srv.log if x[0] != "eof")
    assert data == payload  # jitter never lets a chunk overtake an earlier one
    first = next(x[0] for x in srv.log if x[0] != "eof")
    assert first - t0 >= 1e6  # 30 ± 29 ms: at least 1 ms


def test_latency_counts_from_the_kernel_receive_stamp(servers, proxies):
    """A chunk arriving while the proxy's loop is busy still leaves on time."""
    srv = servers(stamp_echo)
    p = proxies(srv)
    p.add(Toxic("latency", direction="up", latency_ms=30))
    cl = StampClient(p)
    cl.exchange(0)
    for i in range(1, 6):
        assert p.ploop.loop is not None
        p.ploop.loop.call_soon_threadsafe(time.sleep, 0.012)  # the loop thread is stuck 12 ms
        time.sleep(0.001)
        cl.exchange(i)
    up, _ = cl.one_way_ms(srv)
    assert all(abs(x - 30) <= 1.0 for x in up[1:]), up  # not 30 + ~11 ms


# --- add / remove / toxicity ----------------------------------------------------------------

def test_add_and_remove_on_a_live_connection(servers, proxies):
    p = proxies(servers())
    c = connect(p)
    assert rtt(c, 5) < FAST
    tid = p.add(Toxic("latency", latency_ms=40))  # both ways: +80 ms per round trip
    assert 0.079 <= rtt(c, 3) < 0.12
    p.remove(tid)
    assert rtt(c, 5) < FAST
    p.remove(tid)  # unknown ids are ignored
    tid = p.add(Toxic("latency", direction="down", latency_ms=30))
    assert 0.029 <= rtt(c, 3) < 0.06
    p.clear()
    assert rtt(c, 5) < FAST and p.active() == {}


def test_toxicity_zero_has_no_effect(servers, proxies):
    p = proxies(servers())
    p.add(Toxic("latency", latency_ms=200, toxicity=0.0))
    p.add(Toxic("stall", toxicity=0.0))
    p.add(Toxic("reset", toxicity=0.0))
    c = connect(p)
    assert rtt(c, 5) < FAST


def test_toxicity_is_decided_per_connection(servers, proxies):
    p = proxies(servers())
    p.add(Toxic("latency", direction="down", latency_ms=60, toxicity=0.5))
    slow = []
    for _ in range(24):
        c = connect(p)
        first = rtt(c)
        assert (rtt(c, 2) >= 0.059) == (first >= 0.059)  # the same fate for the connection
        slow.append(first >= 0.059)
        c.close()
    assert 2 <= sum(slow) <= 22  # P(outside) ≈ 2e-5


def test_add_is_thread_safe(servers, proxies):
    p = proxies(servers())
    c = connect(p)
    errors: list[BaseException] = []

    def churn() -> None:
        try:
            for _ in range(50):
                p.remove(p.add(Toxic("latency", latency_ms=0.5)))
        except BaseException as e:
            errors.append(e)

    threads = [threading.Thread(target=churn) for _ in range(4)]
    for t in threads:
        t.start()
    for _ in range(50):
        rtt(c)
    for t in threads:
        t.join()
    assert not errors and p.active() == {}
    assert rtt(c, 5) < FAST


# --- bandwidth / slicer ---------------------------------------------------------------------------

def test_bandwidth_limits_throughput(servers, proxies):
    srv = servers(collect)
    p = proxies(srv)
    p.add(Toxic("bandwidth", direction="up", rate_kbps=100))  # 100 kB/s
    c = connect(p)
    t0 = time.monotonic_ns()
    c.sendall(b"z" * 40_000)
    c.shutdown(socket.SHUT_WR)
    assert wait_until(lambda: srv.log and srv.log[-1][0] == "eof", 5)
    chunks = [x for x in srv.log if x[0] != "eof"]
    assert sum(len(x[1]) for x in chunks) == 40_000
    took = (chunks[-1][0] - t0) / 1e9
    assert 0.38 <= took <= 0.6, took  # 40 kB at 100 kB/s = 0.4 s
    # paced, not one burst at the end: half of it arrived around half time
    half = next(t for t, n in _cumulative(chunks) if n >= 20_000)
    assert 0.15 <= (half - t0) / 1e9 <= 0.3


def _cumulative(chunks: list) -> Iterator[tuple[int, int]]:
    n = 0
    for t, d in chunks:
        n += len(d)
        yield t, n


def test_slicer_cuts_data_into_small_pieces(servers, proxies):
    srv = servers(collect)
    p = proxies(srv)
    p.add(Toxic("slicer", direction="up", avg_bytes=10, size_variation=4, delay_us=1000))
    c = connect(p)
    payload = bytes(range(256)) * 4
    c.sendall(payload)
    c.shutdown(socket.SHUT_WR)
    assert wait_until(lambda: srv.log and srv.log[-1][0] == "eof", 5)
    chunks = [x[1] for x in srv.log if x[0] != "eof"]
    assert b"".join(chunks) == payload
    # ~100 slices of 6..14 bytes, 1 ms apart; the receiving thread may be late now and then
    # (then the kernel hands it a few slices at once)
    assert len(chunks) >= 40
    assert statistics.median(len(x) for x in chunks) <= 14


# --- stall / reset / close ------------------------------------------------------------------------

def test_stall_holds_data_but_keeps_the_connection_open(servers, proxies):
    srv = servers(collect)
    p = proxies(srv)
    tid = p.add(Toxic("stall", direction="up"))
    c = connect(p)
    c.sendall(b"held")
    time.sleep(0.3)
    assert srv.accepted.is_set() and srv.log == []
    assert closed_by_peer(c, 0.2) == "open"
    assert p.stats()["connections_live"] == 1
    p.remove(tid)  # held data is released
    assert wait_until(lambda: srv.log != [])
    assert srv.log[0][1] == b"held"


def test_stall_with_timeout_closes(servers, proxies):
    p = proxies(servers())
    p.add(Toxic("stall", delay_ms=150))
    c = connect(p)
    t0 = time.monotonic()
    c.sendall(b"x")
    assert closed_by_peer(c, 2) == "eof"
    assert 0.14 <= time.monotonic() - t0 < 0.5


def test_reset_gives_connection_reset(servers, proxies):
    p = proxies(servers())
    c = connect(p)
    assert rtt(c, 3) < FAST
    p.add(Toxic("reset", direction="up"))
    c.sendall(b"boom")
    with pytest.raises(ConnectionResetError):
        c.settimeout(2)
        while c.recv(100):
            pass
    assert wait_until(lambda: p.stats()["connections_live"] == 0)


def test_reset_after_delay(servers, proxies):
    p = proxies(servers())
    p.add(Toxic("reset", delay_ms=120))
    c = connect(p)
    t0 = time.monotonic()
    c.sendall(b"x")
    assert closed_by_peer(c, 2) == "reset"
    assert 0.11 <= time.monotonic() - t0 < 0.5


def test_close_after_n_bytes(servers, proxies):
    srv = servers(collect)
    p = proxies(srv)
    p.add(Toxic("close_after", direction="up", bytes=50))
    c = connect(p)
    c.sendall(b"a" * 30)
    time.sleep(0.05)
    c.sendall(b"b" * 70)
    assert closed_by_peer(c) == "eof"
    assert wait_until(lambda: srv.log and srv.log[-1][0] == "eof")
    assert b"".join(x[1] for x in srv.log[:-1]) == b"a" * 30 + b"b" * 20


def test_slow_close_delays_the_end_of_stream(servers, proxies):
    srv = servers(reply_after_eof)
    p = proxies(srv)
    p.add(Toxic("slow_close", direction="up", delay_ms=200))
    c = connect(p)
    c.sendall(b"x" * 10)
    t0 = time.monotonic_ns()
    c.shutdown(socket.SHUT_WR)
    assert c.recv(100) == b"got 10"
    eof_at = srv.log[0][1]
    assert 0.19 <= (eof_at - t0) / 1e9 <= 0.5


# --- refuse / errors / lifetime --------------------------------------------------------------------

def test_refuse_closes_live_and_refuses_new_then_recovers(servers, proxies):
    p = proxies(servers())
    c = connect(p)
    assert rtt(c, 3) < FAST
    p.refuse(True)
    assert closed_by_peer(c) in ("eof", "reset")
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(p.address, timeout=2)
    p.refuse(True)  # idempotent
    p.refuse(False)
    c2 = connect(p)
    assert rtt(c2, 3) < FAST
    assert p.stats()["connections_live"] == 1


def test_upstream_down_resets_the_terminal_and_says_so(proxies):
    sink = ListSink()
    p = proxies(f"127.0.0.1:{free_port()}", sink=sink)
    try:
        c = connect(p)
    except ConnectionResetError:
        pass  # the reset overtook connect() returning
    else:
        assert closed_by_peer(c) in ("reset", "eof")
    assert wait_until(lambda: any(e.kind == EventKind.ERROR for e in sink.events))
    ev = next(e for e in sink.events if e.kind == EventKind.ERROR)
    assert ev.terminal == "T1" and "unreachable" in str(ev.data["error"])


def test_listen_address_in_use_is_a_clear_error(servers):
    srv = servers()
    p = FaultProxy("T9.proxy", srv.addr, "127.0.0.1:1")
    with pytest.raises(InfrastructureError, match=srv.addr):
        p.start()
    p.stop()  # never started: harmless


def test_stop_is_idempotent_and_closes_everything(servers):
    loop = ProxyLoop(name="test-proxy-loop")
    srv = servers()
    a = FaultProxy("A", f"127.0.0.1:{free_port()}", srv.addr, ploop=loop).start()
    b = FaultProxy("B", f"127.0.0.1:{free_port()}", srv.addr, ploop=loop).start()
    threads = [t for t in threading.enumerate() if t.name == "test-proxy-loop"]
    assert len(threads) == 1  # one loop thread for all proxies
    ca, cb = connect(a), connect(b)
    assert rtt(ca, 3) < FAST and rtt(cb, 3) < FAST
    a.stop()
    a.stop()
    assert closed_by_peer(ca) in ("eof", "reset")
    assert rtt(cb, 3) < FAST and loop.running
    b.stop()
    assert not loop.running
    assert not [t for t in threading.enumerate() if t.name == "test-proxy-loop"]
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(a.address, timeout=1)
    a.start()  # restartable
    assert rtt(connect(a), 3) < FAST
    a.stop()


def test_default_loop_is_shared():
    assert shared_loop() is shared_loop()
