"""Fault proxy: overhead with no toxic (vs direct and vs socat) and latency-toxic accuracy.

The proxy runs in this process, alone (as in the controller, minus the other threads); the
echo / stamping server and the clients run in child processes so their Python work does not
share the proxy's GIL (socat is a process of its own too).

1. Round trip of 100-byte request/reply messages (2000 per path, interleaved in blocks):
   direct, through FaultProxy (no toxic), through ``socat TCP-LISTEN:…,reuseaddr,fork
   TCP:127.0.0.1:…`` (skipped if socat is missing). Added latency = path p50 − direct p50.
2. Latency toxic (``up``) asked 5 / 50 / 300 ms: 100-byte messages every 2 ms; the sender
   takes the kernel's transmit stamp of each (SO_TIMESTAMPING), the server the kernel's
   receive stamp (SO_TIMESTAMPNS) of its last segment: error = one-way − asked (it includes
   the proxy hop and loopback, shown alone as the "no toxic" row). Both measuring children ask
   for SCHED_FIFO (best effort) so their own scheduling does not blur the figures. Repeated
   with a CPU-busy Python thread in the proxy's process (the GIL: every syscall of the loop
   thread waits for it, up to the 5 ms switch interval), and with that thread but a 0.2 ms
   switch interval.

    .venv/bin/python benchmarks/proxy_overhead.py [--n 2000]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
import struct
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from rig.core.clock import WallToMono  # noqa: E402
from rig.core.netstamp import (  # noqa: E402
    ANC_SPACE,
    enable_rx_timestamps,
    enable_tx_timestamps,
    kernel_wall_ns,
    send_stamped,
)
from rig.faults.proxy import RT_PRIORITY, FaultProxy, Toxic  # noqa: E402

MSG = 100
GOAL_RATIO = 1.5
PIN_CPU = 0
GOAL_ERR_P99_US = 500.0


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _nodelay(s: socket.socket) -> socket.socket:
    s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return s


# --- child: server ------------------------------------------------------------------------------

def _recv_exactly(s: socket.socket, n: int) -> bytes:
    buf = b""
    while len(buf) < n:
        d = s.recv(n - len(buf))
        if not d:
            return buf
        buf += d
    return buf


def _realtime() -> bool:
    try:
        os.sched_setscheduler(0, os.SCHED_FIFO, os.sched_param(20))
        return True
    except (OSError, AttributeError):
        return False


def _pin() -> None:
    """All round-trip players on one CPU: the figure is CPU work per hop, not where the
    scheduler happened to put three processes on a few vCPUs (±30 µs from run to run)."""
    if hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, {PIN_CPU})  # this thread


def _unpin() -> None:
    if hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, range(os.cpu_count() or 1))


def _serve_one(c: socket.socket, mapper: WallToMono) -> None:
    _nodelay(c)
    enable_rx_timestamps(c)
    mode = _recv_exactly(c, 1)
    if mode in (b"E", b"P"):  # echo fixed-size messages (P: on PIN_CPU)
        if mode == b"P":
            _pin()
        while True:
            d = _recv_exactly(c, MSG)
            if len(d) < MSG:
                break
            c.sendall(d)
    elif mode == b"S":  # stamp: reply with the kernel RX stamp (mono ns) of each message
        while True:
            got, wall = b"", None
            while len(got) < MSG:
                d, anc, flags, _ = c.recvmsg(MSG - len(got), ANC_SPACE)
                if not d:
                    break
                got += d
                wall = kernel_wall_ns(anc) or wall
            if len(got) < MSG:
                break
            rx = mapper.to_mono(wall) if wall else time.monotonic_ns()
            c.sendall(struct.pack("!q", rx))
    c.close()


def serve(port: int) -> None:
    _realtime()
    mapper = WallToMono()
    srv = socket.socket()
    srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    srv.bind(("127.0.0.1", port))
    srv.listen(64)
    print("ready", flush=True)
    while True:
        c, _ = srv.accept()
        threading.Thread(target=_serve_one, args=(c, mapper), daemon=True).start()


# --- child: clients -----------------------------------------------------------------------------

def rtt_client(ports: dict[str, int], n: int, pinned: bool,
               blocks: int = 20) -> dict[str, list[float]]:
    if pinned:
        _pin()
    conns = {}
    for name, port in ports.items():
        s = _nodelay(socket.create_connection(("127.0.0.1", port)))
        s.sendall(b"P" if pinned else b"E")
        conns[name] = s
    msg = bytes(MSG)
    out: dict[str, list[float]] = {name: [] for name in ports}
    for s in conns.values():  # warm up
        for _ in range(200):
            s.sendall(msg)
            _recv_exactly(s, MSG)
    per = max(1, n // blocks)
    for _ in range(blocks):
        for name, s in conns.items():
            rec = out[name]
            for _ in range(per):
                t0 = time.perf_counter_ns()
                s.sendall(msg)
                _recv_exactly(s, MSG)
                rec.append((time.perf_counter_ns() - t0) / 1e3)
    for s in conns.values():
        s.close()
    return out


def oneway_client(port: int, count: int, gap_s: float) -> list[float]:
    """One-way µs of ``count`` messages sent ``gap_s`` apart (kernel TX → kernel RX)."""
    _realtime()
    mapper = WallToMono()
    s = _nodelay(socket.create_connection(("127.0.0.1", port)))
    s.sendall(b"S")
    enable_tx_timestamps(s)
    sent: list[int] = []
    msg = bytes(MSG)
    nxt = time.monotonic()
    for _ in range(count):
        while time.monotonic() < nxt:
            time.sleep(max(0.0, nxt - time.monotonic() - 0.0002))
        sent.append(send_stamped(s, msg, mapper).mono_ns)
        nxt += gap_s
    rx = [struct.unpack("!q", _recv_exactly(s, 8))[0] for _ in sent]
    s.close()
    return [(r - t) / 1e3 for r, t in zip(rx, sent, strict=True)]


def run_child(args: list[str]) -> object:
    out = subprocess.run([sys.executable, __file__, *args], capture_output=True, text=True,
                         timeout=120, cwd=ROOT)
    if out.returncode:
        raise RuntimeError(out.stderr)
    return json.loads(out.stdout)


# --- parent -------------------------------------------------------------------------------------

def pct(a: list[float] | np.ndarray, q: float) -> float:
    return float(np.percentile(np.asarray(a), q))


def wait_listening(port: int, timeout: float = 5.0) -> None:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return
        except OSError:
            time.sleep(0.02)
    raise RuntimeError(f"nothing listens on {port}")


def busy(stop: threading.Event) -> None:
    x = 0
    while not stop.is_set():
        for i in range(1000):
            x += i * i


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=2000, help="round trips per path")
    ap.add_argument("--serve", type=int, help=argparse.SUPPRESS)
    ap.add_argument("--rtt", help=argparse.SUPPRESS)
    ap.add_argument("--oneway", help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.serve:
        serve(a.serve)
        return
    if a.rtt:
        ports, pinned = json.loads(a.rtt)
        print(json.dumps(rtt_client(ports, a.n, pinned)))
        return
    if a.oneway:
        port, count, gap = json.loads(a.oneway)
        print(json.dumps(oneway_client(port, count, gap)))
        return

    t_start = time.monotonic()
    echo_port = _port()
    server = subprocess.Popen([sys.executable, __file__, "--serve", str(echo_port)],
                              stdout=subprocess.PIPE, text=True, cwd=ROOT)
    socats: dict[bool, tuple[subprocess.Popen[bytes], int]] = {}
    try:
        assert server.stdout is not None
        server.stdout.readline()
        proxy = FaultProxy("bench", f"127.0.0.1:{_port()}", f"127.0.0.1:{echo_port}").start()
        ports = {"direct": echo_port, "proxy": proxy.address[1]}
        if shutil.which("socat"):
            for pinned in (True, False):
                sp = _port()
                cmd = ["socat", f"TCP-LISTEN:{sp},reuseaddr,fork", f"TCP:127.0.0.1:{echo_port}"]
                if pinned and shutil.which("taskset"):
                    cmd = ["taskset", "-c", str(PIN_CPU), *cmd]
                if proxy.ploop.sched == "fifo" and shutil.which("chrt"):
                    cmd = ["chrt", "-f", str(RT_PRIORITY), *cmd]  # the proxy's policy
                socat = subprocess.Popen(cmd)
                socats[pinned] = (socat, sp)
                wait_listening(sp)
        else:
            print("socat not installed: the socat row is skipped (apt-get install socat)")

        print(f"round trip, {MSG}-byte request/reply, {a.n} per path, interleaved (µs); "
              f"proxy loop thread: {proxy.ploop.sched}")
        ratio = None
        for pinned in (True, False):
            if pinned:
                proxy.ploop.call(_pin)
            here = dict(ports)
            if pinned in socats:
                here["socat"] = socats[pinned][1]
            res = run_child(["--rtt", json.dumps([here, pinned]), "--n", str(a.n)])
            proxy.ploop.call(_unpin)
            assert isinstance(res, dict)
            print("\n" + ("all on one CPU (the reference)" if pinned else
                          "unpinned (scheduler placement adds ±30 µs run to run)"))
            print(f"{'path':<8} {'p50':>8} {'p99':>8} {'added p50':>10} {'added p99':>10}")
            d50, d99 = pct(res["direct"], 50), pct(res["direct"], 99)
            added = {}
            for name in here:
                p50, p99 = pct(res[name], 50), pct(res[name], 99)
                added[name] = (p50 - d50, p99 - d99)
                print(f"{name:<8} {p50:8.1f} {p99:8.1f} {p50 - d50:10.1f} {p99 - d99:10.1f}")
            if "socat" in added and added["socat"][0] > 2:
                r50 = added["proxy"][0] / added["socat"][0]
                r99 = added["proxy"][1] / max(added["socat"][1], 1e-3)
                print(f"overhead vs socat: p50 {r50:.2f}x, p99 {r99:.2f}x")
                if pinned:
                    ratio = r50
            elif "socat" in added:
                print("socat added ~nothing over direct here: no meaningful ratio")
        if ratio is not None:
            print(f"overhead goal (one CPU, p50, <= {GOAL_RATIO}x socat): "
                  f"{'MET' if ratio <= GOAL_RATIO else 'NOT MET'} ({ratio:.2f}x)")

        print("\nlatency toxic (up), one-way kernel TX -> kernel RX, error = one-way - asked (µs)"
              f"; proxy loop thread scheduling: {proxy.ploop.sched}")
        print(f"{'asked':<28} {'n':>4} {'p50':>8} {'p99':>8} {'max':>8}")
        worst99 = 0.0
        idle = [(0, 200), (5, 300), (50, 200), (300, 150)]
        loaded = [(0, 100), (50, 150)]
        switch = sys.getswitchinterval()
        for label, cases, with_busy, interval in (("idle", idle, False, switch),
                                                  ("busy thread", loaded, True, switch),
                                                  ("busy, switch 0.2 ms", loaded, True, 0.0002)):
            stop = threading.Event()
            if with_busy:
                threading.Thread(target=busy, args=(stop,), daemon=True).start()
            sys.setswitchinterval(interval)
            proxy.ploop.lateness_ns.clear()
            try:
                for asked, count in cases:
                    tid = proxy.add(Toxic("latency", direction="up", latency_ms=asked)) \
                        if asked else None
                    err = np.asarray(run_child(["--oneway", json.dumps(
                        [proxy.address[1], count, 0.002])])) - asked * 1000
                    if tid:
                        proxy.remove(tid)
                    name = f"{asked} ms" if asked else "no toxic"
                    print(f"{name + ' (' + label + ')':<28} {len(err):4d} {pct(err, 50):8.1f} "
                          f"{pct(err, 99):8.1f} {err.max():8.1f}")
                    if asked and not with_busy:
                        worst99 = max(worst99, pct(np.abs(err), 99))
            finally:
                stop.set()
                sys.setswitchinterval(switch)
            late = np.asarray(proxy.ploop.lateness_ns) / 1e3
            if len(late):
                print(f"{'  proxy wake-up lateness':<28} {len(late):4d} {pct(late, 50):8.1f} "
                      f"{pct(late, 99):8.1f} {late.max():8.1f}")
        print(f"latency toxic error p99 (idle, worst case) {worst99:.1f} µs "
              f"(goal <= {GOAL_ERR_P99_US:.0f} µs: "
              f"{'MET' if worst99 <= GOAL_ERR_P99_US else 'NOT MET'})")
        print(f"\nproxy stats {proxy.stats()}; runtime {time.monotonic() - t_start:.1f} s")
        proxy.stop()
    finally:
        for socat, _ in socats.values():
            socat.terminate()
            socat.wait(5)
        server.terminate()
        server.wait(5)


if __name__ == "__main__":
    main()
