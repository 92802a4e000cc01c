"""Fresh network-namespace pairs for kernel-fault tests.

``rigt<pid>_<n>r`` is the rig side (where the faults go), ``rigt<pid>_<n>t`` the terminal
side; a veth joins them (``rig0`` 10.77.0.1/24 <-> ``term0`` 10.77.0.2/24). Both are deleted
in teardown, even when the test fails; namespaces left by a killed pytest (dead pid) are
deleted the next time a pair is made. Servers and clients are real sockets made inside the
namespaces with :func:`rig.core.netns.socket_in`.

Without root these tests skip, except in CI (``CI=true``) where they fail: CI runs as root.
"""

from __future__ import annotations

import contextlib
import itertools
import os
import shutil
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field

import pytest

from rig.core import netns

PREFIX = "rigt"
REASON = "needs root (CAP_NET_ADMIN) and nftables; run as root or in CI"
_seq = itertools.count()


def require_netadmin() -> None:
    """Skip (fail under CI=true) unless this process can make namespaces and nft rules."""
    missing = [c for c in ("ip", "nft") if shutil.which(c) is None]
    cap = False
    with contextlib.suppress(OSError):
        for line in open("/proc/self/status"):
            if line.startswith("CapEff:"):
                cap = bool(int(line.split()[1], 16) >> 12 & 1)
    if cap and os.geteuid() == 0 and not missing:
        return
    why = f"{REASON} (euid {os.geteuid()}, CAP_NET_ADMIN {cap}, missing {missing or 'nothing'})"
    if os.environ.get("CI") == "true":
        pytest.fail(why)
    pytest.skip(why)


def sweep_stale() -> None:
    """Delete ``rigt<pid>_*`` namespaces whose pid is gone."""
    for name in netns.names(PREFIX):
        pid = name[len(PREFIX):].split("_", 1)[0]
        if pid.isdigit() and not os.path.exists(f"/proc/{pid}"):
            netns.delete(name)


@dataclass
class NsPair:
    rig: str
    term: str
    rig_if: str = "rig0"
    term_if: str = "term0"
    rig_ip: str = "10.77.0.1"
    term_ip: str = "10.77.0.2"
    _closers: list = field(default_factory=list)

    def add_link(self, n: int) -> tuple[str, str, str, str]:
        """Another veth ``rig<n>`` (10.77.<n>.1) <-> ``term<n>`` (10.77.<n>.2)."""
        r, t = f"rig{n}", f"term{n}"
        netns.add_veth(r, t, netns=self.rig, peer_netns=self.term, addr=f"10.77.{n}.1/24",
                       peer_addr=f"10.77.{n}.2/24")
        return r, t, f"10.77.{n}.1", f"10.77.{n}.2"

    def tcp_server(self, port: int, *, blast: int = 0, ip: str | None = None) -> TcpServer:
        s = TcpServer(self.rig, ip or self.rig_ip, port, blast)
        self._closers.append(s.close)
        return s

    def udp_echo(self, port: int) -> UdpEcho:
        s = UdpEcho(self.rig, self.rig_ip, port)
        self._closers.append(s.close)
        return s

    def connect(self, port: int, timeout: float, ip: str | None = None) -> socket.socket:
        """A TCP connection from the terminal side; raises on refusal / timeout."""
        c = netns.socket_in(self.term)
        c.settimeout(timeout)
        try:
            c.connect((ip or self.rig_ip, port))
        except BaseException:
            c.close()
            raise
        self._closers.append(c.close)
        return c

    def can_connect(self, port: int, timeout: float = 0.3, ip: str | None = None) -> bool:
        try:
            self.connect(port, timeout, ip).close()
            return True
        except OSError:
            return False

    def wait_connect(self, port: int, within: float = 3.0, ip: str | None = None) -> float:
        """Seconds until a connect succeeds; fails the test after ``within``."""
        t0 = time.monotonic()
        while time.monotonic() - t0 < within:
            if self.can_connect(port, 0.2, ip):
                return time.monotonic() - t0
            time.sleep(0.02)
        pytest.fail(f"no TCP connect to port {port} within {within} s")

    def udp_client(self) -> socket.socket:
        c = netns.socket_in(self.term, socket.AF_INET, socket.SOCK_DGRAM)
        self._closers.append(c.close)
        return c

    def close(self) -> None:
        for c in reversed(self._closers):
            with contextlib.suppress(Exception):
                c()


class TcpServer:
    """Echo server in the rig namespace; with ``blast`` > 0 it sends that many bytes instead."""

    def __init__(self, ns: str, ip: str, port: int, blast: int = 0) -> None:
        self.sock = netns.socket_in(ns)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind((ip, port))
        self.sock.listen(64)
        self.blast = blast
        self.accepted = 0
        self._stop = False
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        while not self._stop:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            self.accepted += 1
            threading.Thread(target=self._handle, args=(conn,), daemon=True).start()

    def _handle(self, conn: socket.socket) -> None:
        with conn:
            try:
                if self.blast:
                    conn.sendall(b"x" * self.blast)
                    conn.shutdown(socket.SHUT_WR)
                    conn.recv(1)
                    return
                while data := conn.recv(4096):
                    conn.sendall(data)
            except OSError:
                pass

    def close(self) -> None:
        self._stop = True
        with contextlib.suppress(OSError):
            self.sock.shutdown(socket.SHUT_RDWR)
        self.sock.close()


class UdpEcho:
    """UDP echo in the rig namespace; counts what reached it."""

    def __init__(self, ns: str, ip: str, port: int) -> None:
        self.sock = netns.socket_in(ns, socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.setsockopt(socket.SOL_SOCKET, 33, 4 << 20)  # SO_RCVBUFFORCE: no buffer drops
        self.sock.bind((ip, port))
        self.port = port
        self.received = 0
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        while True:
            try:
                data, peer = self.sock.recvfrom(2048)
            except OSError:
                return
            if peer is None:  # shut down
                return
            self.received += 1
            with contextlib.suppress(OSError):  # ENETUNREACH while the link is down
                self.sock.sendto(data, peer)

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.sock.shutdown(socket.SHUT_RDWR)
        self.sock.close()


def udp_round(pair: NsPair, port: int, n: int, *, wait: float = 0.3) -> set[int]:
    """Send ``n`` numbered datagrams to the echo server, in batches; the numbers echoed back."""
    c = pair.udp_client()
    c.setsockopt(socket.SOL_SOCKET, 33, 4 << 20)
    got: set[int] = set()
    c.settimeout(0)
    for i in range(n):
        c.sendto(i.to_bytes(4, "big"), (pair.rig_ip, port))
        if i % 50 == 49:  # let the echo thread keep up
            time.sleep(0.002)
    c.settimeout(wait)
    with contextlib.suppress(TimeoutError):
        while len(got) < n:
            got.add(int.from_bytes(c.recv(64), "big"))
    return got


def nft_tables(ns: str) -> list[str]:
    out = subprocess.run(["ip", "netns", "exec", ns, "nft", "list", "tables"],
                         capture_output=True, text=True, check=True).stdout
    return [line.split()[-1] for line in out.splitlines() if line.startswith("table")]


def link_info(ns: str, iface: str) -> dict:
    """{'up': admin up, 'alias': ifalias, 'qdisc': root qdisc kind, 'qhandle': its handle}."""
    import json

    link = json.loads(subprocess.run(["ip", "-n", ns, "-j", "link", "show", iface],
                                     capture_output=True, text=True, check=True).stdout)[0]
    q = json.loads(subprocess.run(["ip", "netns", "exec", ns, "tc", "-j", "qdisc", "show", "dev",
                                   iface], capture_output=True, text=True, check=True).stdout)
    root = next((x for x in q if x.get("root")), {})
    return {"up": "UP" in link.get("flags", []), "alias": link.get("ifalias", ""),
            "qdisc": root.get("kind"), "qhandle": root.get("handle")}


@contextlib.contextmanager
def ns_pair() -> Iterator[NsPair]:
    sweep_stale()
    n = next(_seq)
    base = f"{PREFIX}{os.getpid()}_{n}"
    pair = NsPair(rig=base + "r", term=base + "t")
    try:
        netns.create(pair.rig)
        netns.create(pair.term)
        netns.add_veth(pair.rig_if, pair.term_if, netns=pair.rig, peer_netns=pair.term,
                       addr=f"{pair.rig_ip}/24", peer_addr=f"{pair.term_ip}/24")
        yield pair
    finally:
        pair.close()
        netns.delete(pair.rig)
        netns.delete(pair.term)


@pytest.fixture(name="nspair")
def nspair_fixture() -> Iterator[NsPair]:
    """A fresh rig/terminal namespace pair over a veth (deleted afterwards, whatever happens)."""
    require_netadmin()
    with ns_pair() as pair:
        yield pair
