"""The L4 fault proxy: a TCP proxy on a terminal's network path that injects "toxics".

terminal → :class:`FaultProxy` (listen) → acquirer host (upstream). Semantics follow Toxiproxy
(latency + jitter, bandwidth, timeout/stall, reset_peer, slicer, limit_data, slow_close), per
direction (``up`` = terminal→host, ``down`` = host→terminal), with a per-connection toxicity.

Timing. Every socket has ``SO_TIMESTAMPNS``; while a toxic is active in a direction, chunks
are read with ``recvmsg`` and a chunk the kernel received at ``t`` (CLOCK_REALTIME, mapped
onto the monotonic timeline with :class:`rig.core.clock.WallToMono`) is released at ``t + delay``,
not at "when Python got to it". Releases of one direction never overtake each other. With no
toxic a chunk goes straight from ``recv_into`` to ``send`` in the reader callback (no
queue, no allocation).

Release clock (measured on the 2-vCPU dev VM, 500 timers 3 ms ahead, error = fire − asked):
``loop.call_at`` p50 784 µs / p99 1364 µs (epoll rounds its timeout *up* to whole ms);
a ``timerfd`` (CLOCK_MONOTONIC, absolute, ns) watched by the loop p50 60 µs / p99 150-210 µs /
max 1.3-2.4 ms (wake-up latency of the VM); the same timerfd armed 200 µs early, then a busy
wait to the exact time: p50 0.3 µs / p99 5.5 µs / max 0.3 ms. The last is used: it keeps all
socket work on the one loop thread (no cross-thread sends, no second GIL contender) and
costs at most :data:`SPIN_NS` of CPU per release. Where ``timerfd`` is unavailable the loop
falls back to ``call_at`` 1.2 ms early plus the same busy wait.

Scheduling. The loop thread asks for SCHED_FIFO (priority :data:`RT_PRIORITY`, with
SCHED_RESET_ON_FORK so threads it might start do not inherit it), else nice -10, else stays
as it is (``ProxyLoop.sched`` says which). Measured with two CPU-bound processes on the 2 vCPUs,
timerfd + spin release error p99: normal 5.9 ms, nice -10 0.85 ms, SCHED_FIFO 7.7 µs. The
busy wait is bounded (:data:`_MAX_SPIN_BATCH_NS` per wake-up), so a real-time thread cannot
monopolise a CPU; pass ``ProxyLoop(realtime=False)`` to keep the default policy.

Overhead with no toxic (``benchmarks/proxy_overhead.py``, 100-byte request/reply, all players
on one CPU): +17.5 µs per round trip over direct, socat +18.3 µs (0.96x).

Limits: the proxy is Python. Each wake-up and each socket call of the loop thread must re-take
the GIL, which a CPU-busy Python thread of the same process hands over only every switch
interval (5 ms): with such a thread, forwarding without a toxic adds p50 3-6 ms / p99 14-23 ms
and the latency toxic's error is as large (a 0.2 ms switch interval: p50 0.1-0.3 ms, p99
1-5 ms). Run the proxies in a process without busy Python threads to keep the µs figures.

All :class:`FaultProxy` objects of a process share one :class:`ProxyLoop` (one thread, started
with the first proxy, stopped with the last). Public methods may be called from any thread.
"""

from __future__ import annotations

import asyncio
import collections
import concurrent.futures
import ctypes
import ctypes.util
import errno
import heapq
import itertools
import logging
import math
import os
import random
import socket
import struct
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, fields
from typing import Any, Literal, TypeVar

from ..core.clock import WallToMono
from ..core.errors import InfrastructureError
from ..core.netstamp import ANC_SPACE, enable_rx_timestamps, kernel_wall_ns
from ..timeline.events import Event, EventKind, Sink

log = logging.getLogger(__name__)

ToxicKind = Literal["latency", "bandwidth", "stall", "reset", "slicer", "close_after", "slow_close"]
Direction = Literal["up", "down", "both"]

KINDS: tuple[str, ...] = ("latency", "bandwidth", "stall", "reset", "slicer", "close_after",
                          "slow_close")
DIRECTIONS: tuple[str, ...] = ("up", "down", "both")

# which numeric parameters each kind takes (the rest must stay 0)
_PARAMS: dict[str, frozenset[str]] = {
    "latency": frozenset({"latency_ms", "jitter_ms"}),
    "bandwidth": frozenset({"rate_kbps"}),
    "stall": frozenset({"delay_ms"}),
    "reset": frozenset({"delay_ms"}),
    "slicer": frozenset({"avg_bytes", "size_variation", "delay_us"}),
    "close_after": frozenset({"bytes"}),
    "slow_close": frozenset({"delay_ms"}),
}
_FLOATS = ("toxicity", "latency_ms", "jitter_ms", "rate_kbps", "delay_ms")
_INTS = ("avg_bytes", "size_variation", "delay_us", "bytes")


@dataclass(frozen=True)
class Toxic:
    """One fault on a proxy's traffic (Toxiproxy semantics).

    - ``latency``: each chunk is released ``latency_ms`` ± ``jitter_ms`` (uniform, drawn per
      chunk, never below 0) after the kernel received it; a chunk never overtakes an earlier
      one. At least one of the two must be > 0.
    - ``bandwidth``: at most ``rate_kbps`` **kilobytes** (1000 bytes) per second, as
      Toxiproxy's ``rate`` (not kilobits).
    - ``stall``: data is held (not dropped: TCP would retransmit it) while the connection stays
      open (Toxiproxy ``timeout`` 0); with ``delay_ms`` > 0 the connection is closed that long
      after the stall began (Toxiproxy ``timeout``). Removing the toxic releases held data.
    - ``reset``: when data (or end of stream) arrives in that direction, it is dropped and,
      ``delay_ms`` later (0: at once), both sides get a TCP RST (SO_LINGER 0) (Toxiproxy
      ``reset_peer``).
    - ``slicer``: chunks are cut into slices of ``avg_bytes`` ± ``size_variation`` bytes, sent
      ``delay_us`` apart.
    - ``close_after``: after ``bytes`` bytes in that direction (counted from when the toxic
      applies to the connection) both sides are closed (Toxiproxy ``limit_data``); with
      ``bytes`` 0 the first data in that direction closes it, nothing forwarded.
    - ``slow_close``: the end of stream (FIN) in that direction is forwarded ``delay_ms`` late.

    ``toxicity`` is the probability the toxic applies to a connection, decided once per
    connection (live connections roll when the toxic is added). Invalid values raise
    :class:`ValueError` on construction.
    """

    kind: ToxicKind
    direction: Direction = "both"
    toxicity: float = 1.0
    latency_ms: float = 0.0
    jitter_ms: float = 0.0
    rate_kbps: float = 0.0
    avg_bytes: int = 0
    size_variation: int = 0
    delay_us: int = 0
    bytes: int = 0
    delay_ms: float = 0.0

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"unknown toxic kind {self.kind!r}; one of {', '.join(KINDS)}")
        if self.direction not in DIRECTIONS:
            raise ValueError(f"{self.kind} toxic: direction {self.direction!r} is not one of "
                             f"{', '.join(DIRECTIONS)}")
        for name in _FLOATS:
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int | float):
                raise ValueError(f"{self.kind} toxic: {name} must be a number, got {v!r}")
            if not math.isfinite(v) or v < 0:
                raise ValueError(f"{self.kind} toxic: {name} must be finite and >= 0, got {v!r}")
        for name in _INTS:
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int):
                raise ValueError(f"{self.kind} toxic: {name} must be an integer, got {v!r}")
            if v < 0:
                raise ValueError(f"{self.kind} toxic: {name} must be >= 0, got {v!r}")
        if self.toxicity > 1:
            raise ValueError(f"{self.kind} toxic: toxicity is a probability in [0, 1], "
                             f"got {self.toxicity!r}")
        allowed = _PARAMS[self.kind]
        for f in fields(self):
            if f.name in _FLOATS[1:] + _INTS and f.name not in allowed and getattr(self, f.name):
                raise ValueError(f"{self.kind} toxic: {f.name} does not apply (it takes "
                                 f"{', '.join(sorted(allowed))})")
        if self.kind == "latency" and self.latency_ms <= 0 and self.jitter_ms <= 0:
            raise ValueError("latency toxic: latency_ms or jitter_ms must be > 0")
        elif self.kind == "bandwidth" and self.rate_kbps <= 0:
            raise ValueError("bandwidth toxic: rate_kbps (kilobytes/s) must be > 0")
        elif self.kind == "slicer":
            if self.avg_bytes <= 0:
                raise ValueError("slicer toxic: avg_bytes must be > 0")
            if self.size_variation >= self.avg_bytes:
                raise ValueError(f"slicer toxic: size_variation ({self.size_variation}) must be "
                                 f"smaller than avg_bytes ({self.avg_bytes})")
        elif self.kind == "slow_close" and self.delay_ms <= 0:
            raise ValueError("slow_close toxic: delay_ms must be > 0")

    def applies_to(self, direction: str) -> bool:
        return self.direction == "both" or self.direction == direction


# ---------------------------------------------------------------------------------- timerfd

SPIN_NS = 200_000  # wake this early, then busy-wait to the exact release time
RT_PRIORITY = 10  # SCHED_FIFO priority of the loop thread (1..99; kernel threads use 50)
_FALLBACK_EARLY_S = 0.0012  # call_at fires up to 1 ms late: wake this early without timerfd
_MAX_SPIN_BATCH_NS = 2_000_000  # give the loop back after this much back-to-back releasing


class _Timespec(ctypes.Structure):
    _fields_ = [("tv_sec", ctypes.c_long), ("tv_nsec", ctypes.c_long)]


class _Itimerspec(ctypes.Structure):
    _fields_ = [("it_interval", _Timespec), ("it_value", _Timespec)]


def _libc() -> Any:
    if not sys.platform.startswith("linux"):
        return None
    try:
        # PyDLL: the call keeps the GIL (a µs syscall); a CDLL call would drop and re-take it,
        # and re-taking it can cost a whole switch interval when another thread is busy.
        lib = ctypes.PyDLL(ctypes.util.find_library("c") or None, use_errno=True)
        lib.timerfd_create.argtypes = [ctypes.c_int, ctypes.c_int]
        lib.timerfd_settime.argtypes = [ctypes.c_int, ctypes.c_int,
                                        ctypes.POINTER(_Itimerspec), ctypes.c_void_p]
        return lib
    except (OSError, AttributeError):
        return None


_LIBC = _libc()
_CLOCK_MONOTONIC = 1  # time.monotonic_ns() reads CLOCK_MONOTONIC on Linux
_TFD_TIMER_ABSTIME = 1


class _TimerFd:
    """An absolute CLOCK_MONOTONIC timer with ns resolution, readable when it expires.

    (Re-)arming or disarming resets its expiry count, so it need not be read.
    """

    def __init__(self) -> None:
        if _LIBC is None:
            raise OSError("timerfd unavailable")
        fd = _LIBC.timerfd_create(_CLOCK_MONOTONIC, os.O_NONBLOCK | os.O_CLOEXEC)
        if fd < 0:
            raise OSError(ctypes.get_errno(), "timerfd_create failed")
        self.fd = fd
        self._spec = _Itimerspec()

    def arm(self, when_ns: int) -> None:
        when_ns = max(when_ns, 1)  # 0 would disarm
        self._spec.it_value.tv_sec, self._spec.it_value.tv_nsec = divmod(when_ns, 1_000_000_000)
        if _LIBC.timerfd_settime(self.fd, _TFD_TIMER_ABSTIME, ctypes.byref(self._spec), None):
            raise OSError(ctypes.get_errno(), "timerfd_settime failed")

    def disarm(self) -> None:
        self._spec.it_value.tv_sec = self._spec.it_value.tv_nsec = 0
        if _LIBC.timerfd_settime(self.fd, 0, ctypes.byref(self._spec), None):
            raise OSError(ctypes.get_errno(), "timerfd_settime failed")

    def close(self) -> None:
        os.close(self.fd)


# ------------------------------------------------------------------------------ ProxyLoop

T = TypeVar("T")


class ProxyLoop:
    """One asyncio loop thread shared by every :class:`FaultProxy` of a process.

    Started by the first proxy's ``start()``, stopped when the last proxy stops. Also a precise
    wake-up service (:meth:`wake_at`) for the proxies' release times.
    """

    def __init__(self, name: str = "rig-fault-proxy", *, realtime: bool = True) -> None:
        self.name = name
        self.realtime = realtime
        self.sched = "normal"  # what the loop thread got: "fifo", "nice-10" or "normal"
        self.lateness_ns: collections.deque[int] = collections.deque(maxlen=4096)
        self._lock = threading.Lock()
        self._users = 0
        self._thread: threading.Thread | None = None
        self.loop: asyncio.AbstractEventLoop | None = None
        self.mapper = WallToMono()
        self._heap: list[tuple[int, int, Any]] = []
        self._seq = itertools.count()
        self._timer: _TimerFd | None = None
        self._armed_ns: int | None = None
        self._fallback: asyncio.TimerHandle | None = None

    # -- lifetime
    def acquire(self) -> None:
        with self._lock:
            if self._thread is None:
                ready = threading.Event()
                self._thread = threading.Thread(target=self._run, args=(ready,), name=self.name,
                                                daemon=True)
                self._thread.start()
                ready.wait()
            self._users += 1

    def release(self) -> None:
        with self._lock:
            self._users -= 1
            if self._users > 0 or self._thread is None:
                return
            thread, loop = self._thread, self.loop
            self._thread = None
            assert loop is not None
            loop.call_soon_threadsafe(loop.stop)
            if thread is not threading.current_thread():
                thread.join(timeout=5)

    @property
    def running(self) -> bool:
        return self._thread is not None

    def _raise_priority(self) -> str:
        if not self.realtime or not sys.platform.startswith("linux"):
            return "normal"
        try:
            os.sched_setscheduler(0, os.SCHED_FIFO | os.SCHED_RESET_ON_FORK,
                                  os.sched_param(RT_PRIORITY))
            return "fifo"
        except (OSError, AttributeError):
            pass
        try:
            os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), -10)
            return "nice-10"
        except OSError:
            return "normal"

    def _run(self, ready: threading.Event) -> None:
        self.sched = self._raise_priority()
        log.debug("fault proxy loop %s: scheduling %s", self.name, self.sched)
        loop = asyncio.new_event_loop()
        self.loop = loop
        self._heap.clear()
        self._armed_ns = None
        try:
            self._timer = _TimerFd()
            loop.add_reader(self._timer.fd, self._on_timer)
        except OSError as e:
            log.info("fault proxy: no timerfd (%s); release timing falls back to call_at", e)
            self._timer = None
        ready.set()
        try:
            loop.run_forever()
        finally:
            if self._timer is not None:
                loop.remove_reader(self._timer.fd)
                self._timer.close()
                self._timer = None
            loop.close()

    def in_loop(self) -> bool:
        return self._thread is not None and threading.current_thread() is self._thread

    def call(self, fn: Callable[..., T], *args: Any, timeout: float = 10.0) -> T:
        """Run ``fn(*args)`` on the loop thread and return its result (inline if already there)."""
        if self.in_loop():
            return fn(*args)
        loop = self.loop
        if loop is None or self._thread is None:
            raise InfrastructureError("fault proxy loop is not running (start() the proxy first)")
        fut: concurrent.futures.Future[T] = concurrent.futures.Future()

        def run() -> None:
            try:
                fut.set_result(fn(*args))
            except BaseException as e:  # handed to the caller
                fut.set_exception(e)

        loop.call_soon_threadsafe(run)
        return fut.result(timeout)

    # -- precise wake-ups (loop thread only)
    def wake_at(self, when_ns: int, target: Any) -> None:
        """Call ``target._wake(when_ns)`` at ``when_ns`` (monotonic), on time to the µs."""
        heapq.heappush(self._heap, (when_ns, next(self._seq), target))
        self._arm()

    def _arm(self) -> None:
        if not self._heap:
            if self._timer is not None and self._armed_ns is None:
                self._timer.disarm()  # it may have fired: clear its readiness
                self._armed_ns = -1  # "disarmed"; any wake_at re-arms
            return
        first = self._heap[0][0]
        if self._armed_ns is not None and 0 <= self._armed_ns <= first:
            return
        self._armed_ns = first
        if self._timer is not None:
            self._timer.arm(first - SPIN_NS)
        else:
            assert self.loop is not None
            if self._fallback is not None:
                self._fallback.cancel()
            self._fallback = self.loop.call_at(first / 1e9 - _FALLBACK_EARLY_S, self._on_timer)

    def _on_timer(self) -> None:
        self._fallback = None
        self._armed_ns = None
        heap = self._heap
        horizon = SPIN_NS if self._timer is not None else int(_FALLBACK_EARLY_S * 1e9)
        start = time.monotonic_ns()
        while heap:
            now = time.monotonic_ns()
            when = heap[0][0]
            if when > now + horizon or now - start > _MAX_SPIN_BATCH_NS:
                break
            _, _, target = heapq.heappop(heap)
            while time.monotonic_ns() < when:
                pass  # the busy wait that makes the release exact (see module docstring)
            self.lateness_ns.append(time.monotonic_ns() - when)
            try:
                target._wake(when)
            except Exception:  # one connection's bug must not stop the others' timers
                log.exception("fault proxy: release failed")
        self._arm()


_SHARED = ProxyLoop()


def shared_loop() -> ProxyLoop:
    """The process's default :class:`ProxyLoop`."""
    return _SHARED


# ----------------------------------------------------------------------------- connections

_BUF = 65536
_HIGH_WATER = 1 << 20  # stop reading a side while this much is queued for the other
_LOW_WATER = 1 << 18
_EOF = object()
_CLOSE = object()
_LINGER_RST = struct.pack("ii", 1, 0)


@dataclass(slots=True)
class _Plan:
    """The toxics active on one direction of one connection, compiled."""

    latency_ns: int = 0
    jitter_ns: int = 0
    rate_bps: float = 0.0  # bytes per second; 0: unlimited
    slicer: Toxic | None = None
    stall: bool = False
    reset_ns: int | None = None  # reset toxic: RST this long after data arrives
    limits: tuple[tuple[str, int], ...] = ()  # (toxic id, bytes) of close_after toxics
    slow_close_ns: int = 0


class _Pipe:
    """One direction of a connection: src → dst."""

    def __init__(self, conn: _Conn, direction: str, src: socket.socket,
                 dst: socket.socket) -> None:
        self.conn = conn
        self.dir = direction
        self.src = src
        self.dst = dst
        self.loop = conn.loop
        self.buf = bytearray(_BUF)
        self.view = memoryview(self.buf)
        self.queue: collections.deque[tuple[int, Any]] = collections.deque()
        self.queued = 0
        self.out: bytes | None = None  # what a partial send left
        self.reading = False
        self.writing = False
        self.eof_in = False
        self.done = False
        self.plan: _Plan | None = None
        self.last_release = 0
        self.bw_next = 0
        self.wake_ns: int | None = None
        self.counts: dict[str, int] = {}

    # -- registration
    def start(self) -> None:
        self.resume()

    def resume(self) -> None:
        if not self.reading and not self.eof_in and not self.conn.closed:
            self.loop.add_reader(self.src.fileno(), self.on_readable)
            self.reading = True

    def pause(self) -> None:
        if self.reading:
            self.loop.remove_reader(self.src.fileno())
            self.reading = False

    def unregister(self) -> None:
        self.pause()
        if self.writing:
            self.loop.remove_writer(self.dst.fileno())
            self.writing = False

    # -- input
    def on_readable(self) -> None:
        conn = self.conn
        if self.plan is None and not self.queue and self.out is None:
            # fast path: no toxic, nothing pending
            try:
                n = self.src.recv_into(self.buf)
            except (BlockingIOError, InterruptedError):
                return
            except OSError as e:
                conn.failed(f"{self.dir}: receive failed: {e}")
                return
            if n == 0:
                self.end_of_input()
                return
            self.send(self.view[:n])
            return
        try:
            data, anc, flags, _ = self.src.recvmsg(_BUF, ANC_SPACE)
        except (BlockingIOError, InterruptedError):
            return
        except OSError as e:
            conn.failed(f"{self.dir}: receive failed: {e}")
            return
        if not data:
            self.end_of_input()
            return
        wall = None if flags & socket.MSG_CTRUNC else kernel_wall_ns(anc)
        rx_ns = time.monotonic_ns() if wall is None else conn.proxy.ploop.mapper.to_mono(wall)
        self.schedule(data, rx_ns)

    def schedule(self, data: bytes, rx_ns: int) -> None:
        plan = self.plan or _Plan()
        if plan.reset_ns is not None:
            self.reset(plan.reset_ns)
            return
        close = False
        if plan.limits:
            left = min(limit - self.counts.get(tid, 0) for tid, limit in plan.limits)
            if len(data) >= left:
                data, close = data[:max(left, 0)], True
            for tid, _ in plan.limits:
                self.counts[tid] = self.counts.get(tid, 0) + len(data)
        rel = rx_ns + plan.latency_ns
        if plan.jitter_ns:
            rel += random.randint(-plan.jitter_ns, plan.jitter_ns)
        rel = max(rel, self.last_release, rx_ns)
        pieces: list[tuple[int, bytes]]
        if plan.slicer is not None and data:
            pieces = []
            sl = plan.slicer
            step, at = sl.delay_us * 1000, 0
            while at < len(data):
                size = sl.avg_bytes + (random.randint(-sl.size_variation, sl.size_variation)
                                       if sl.size_variation else 0)
                pieces.append((rel, data[at:at + size]))
                at += size
                rel += step
        else:
            pieces = [(rel, data)] if data else []
        if plan.rate_bps:
            chunk = max(1, int(plan.rate_bps * 0.01))  # ≤ 10 ms of transmission per piece
            paced = []
            for when, piece in pieces:
                for i in range(0, len(piece), chunk):
                    part = piece[i:i + chunk]
                    self.bw_next = max(when, self.bw_next) + int(len(part) * 1e9 / plan.rate_bps)
                    paced.append((self.bw_next, part))
            pieces = paced
        for when, piece in pieces:
            self.queue.append((when, piece))
            self.queued += len(piece)
            self.last_release = max(self.last_release, when)
        if close:
            self.queue.append((self.last_release, _CLOSE))
            self.eof_in = True
            self.pause()
        elif self.queued > _HIGH_WATER:
            self.pause()
        self.flush()

    def end_of_input(self) -> None:
        self.eof_in = True
        self.pause()
        plan = self.plan
        if plan is not None and plan.reset_ns is not None:
            self.reset(plan.reset_ns)
            return
        if plan is None and not self.queue and self.out is None:
            self.forward_eof()
            return
        now = time.monotonic_ns()
        delay = 0 if plan is None else plan.latency_ns + plan.slow_close_ns
        self.last_release = max(self.last_release, now + delay)
        self.queue.append((self.last_release, _EOF))
        self.flush()

    # -- output
    def flush(self) -> None:
        conn = self.conn
        while self.queue and self.out is None and not conn.closed:
            if self.plan is not None and self.plan.stall:
                return
            when, item = self.queue[0]
            if when > time.monotonic_ns():
                if self.wake_ns is None or when < self.wake_ns:
                    self.wake_ns = when
                    conn.proxy.ploop.wake_at(when, self)
                return
            self.queue.popleft()
            if item is _EOF:
                self.forward_eof()
            elif item is _CLOSE:
                log.info("fault proxy %s: close_after reached (%s), closing", conn.proxy.name,
                         self.dir)
                conn.close()
                return
            else:
                self.queued -= len(item)
                self.send(item)
        if (not self.queue or self.queued < _LOW_WATER) and self.out is None:
            self.resume()

    def reset(self, delay_ns: int) -> None:
        """Reset toxic: drop what arrived, stop reading, RST both sides after the delay."""
        self.pause()
        conn = self.conn
        if "reset" in conn.timers:
            return
        log.info("fault proxy %s: reset toxic, resetting %s", conn.proxy.name, conn.peer)
        if delay_ns <= 0:
            conn.close(reset=True)
        else:
            conn.timers["reset"] = self.loop.call_later(delay_ns / 1e9, conn.close, True)

    def _wake(self, when_ns: int) -> None:
        if self.wake_ns == when_ns:
            self.wake_ns = None
            self.flush()

    def send(self, data: bytes | memoryview) -> None:
        try:
            sent = self.dst.send(data)
        except (BlockingIOError, InterruptedError):
            sent = 0
        except OSError as e:
            self.conn.failed(f"{self.dir}: send failed: {e}")
            return
        self.conn.proxy.count(self.dir, sent)
        if sent < len(data):
            self.out = bytes(data[sent:])
            self.pause()
            if not self.writing:
                self.loop.add_writer(self.dst.fileno(), self.on_writable)
                self.writing = True

    def on_writable(self) -> None:
        out = self.out
        if out is None or self.conn.closed:
            return
        try:
            sent = self.dst.send(out)
        except (BlockingIOError, InterruptedError):
            return
        except OSError as e:
            self.conn.failed(f"{self.dir}: send failed: {e}")
            return
        self.conn.proxy.count(self.dir, sent)
        if sent < len(out):
            self.out = out[sent:]
            return
        self.out = None
        self.loop.remove_writer(self.dst.fileno())
        self.writing = False
        self.flush()
        if self.out is None and not self.queue and self.eof_in and not self.done:
            self.forward_eof()

    def forward_eof(self) -> None:
        if self.done or self.conn.closed:
            return
        if self.out is not None:
            return  # on_writable forwards it once drained
        self.done = True
        try:
            self.dst.shutdown(socket.SHUT_WR)
        except OSError as e:
            log.debug("fault proxy %s: shutdown(%s): %s", self.conn.proxy.name, self.dir, e)
        self.conn.check_done()


class _Conn:
    """One terminal connection and its upstream connection."""

    def __init__(self, proxy: FaultProxy, client: socket.socket, peer: str) -> None:
        self.proxy = proxy
        self.loop = proxy.ploop.loop
        self.client = client
        self.peer = peer
        self.upstream: socket.socket | None = None
        self.up: _Pipe | None = None
        self.down: _Pipe | None = None
        self.applied: set[str] = set()
        self.timers: dict[str, asyncio.TimerHandle] = {}
        self.closed = False
        self._connect_timeout: asyncio.TimerHandle | None = None
        self._connecting = False

    def pipes(self) -> tuple[_Pipe, ...]:
        return tuple(p for p in (self.up, self.down) if p is not None)

    # -- upstream connect
    def connect(self) -> None:
        family, addr = self.proxy.upstream_addr
        up = socket.socket(family, socket.SOCK_STREAM)
        self.upstream = up
        up.setblocking(False)
        _tune(up)
        err = up.connect_ex(addr)
        if err == 0:
            self._connected()
        elif err in (errno.EINPROGRESS, errno.EAGAIN, errno.EALREADY):
            self._connecting = True
            self.loop.add_writer(up.fileno(), self._connect_done)
            self._connect_timeout = self.loop.call_later(10.0, self._connect_expired)
        else:
            self._connect_failed(os.strerror(err))

    def _connect_done(self) -> None:
        assert self.upstream is not None
        self._stop_connecting()
        err = self.upstream.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
        if err:
            self._connect_failed(os.strerror(err))
        else:
            self._connected()

    def _connect_expired(self) -> None:
        self._stop_connecting()
        self._connect_failed("timed out after 10 s")

    def _stop_connecting(self) -> None:
        if self._connecting and self.upstream is not None:
            self.loop.remove_writer(self.upstream.fileno())
        self._connecting = False
        if self._connect_timeout is not None:
            self._connect_timeout.cancel()
            self._connect_timeout = None

    def _connect_failed(self, why: str) -> None:
        p = self.proxy
        log.warning("fault proxy %s: upstream %s unreachable (%s); resetting %s", p.name,
                    p.upstream, why, self.peer)
        p.note_error(f"upstream {p.upstream} unreachable: {why}")
        self.close(reset=True)

    def _connected(self) -> None:
        if self.closed:
            return
        assert self.upstream is not None
        self.up = _Pipe(self, "up", self.client, self.upstream)
        self.down = _Pipe(self, "down", self.upstream, self.client)
        self.replan()
        self.up.start()
        self.down.start()

    # -- toxics
    def roll(self, tid: str, toxic: Toxic) -> None:
        if toxic.toxicity >= 1 or random.random() < toxic.toxicity:
            self.applied.add(tid)
            if toxic.kind == "stall" and toxic.delay_ms > 0:
                self.timers[tid] = self.loop.call_later(toxic.delay_ms / 1000, self._timeout)

    def _timeout(self) -> None:
        log.info("fault proxy %s: stall timeout, closing %s", self.proxy.name, self.peer)
        self.close()

    def unapply(self, tid: str) -> None:
        self.applied.discard(tid)
        handle = self.timers.pop(tid, None)
        if handle is not None:
            handle.cancel()

    def replan(self) -> None:
        toxics = self.proxy.toxics
        for pipe in self.pipes():
            plan = _Plan()
            active = False
            limits = []
            for tid in sorted(self.applied):
                t = toxics.get(tid)
                if t is None or not t.applies_to(pipe.dir):
                    continue
                if t.kind == "latency":
                    plan.latency_ns += int(t.latency_ms * 1e6)
                    plan.jitter_ns += int(t.jitter_ms * 1e6)
                elif t.kind == "bandwidth":
                    rate = t.rate_kbps * 1000
                    plan.rate_bps = rate if not plan.rate_bps else min(plan.rate_bps, rate)
                elif t.kind == "slicer":
                    plan.slicer = t
                elif t.kind == "stall":
                    plan.stall = True
                elif t.kind == "close_after":
                    limits.append((tid, t.bytes))
                elif t.kind == "slow_close":
                    plan.slow_close_ns = max(plan.slow_close_ns, int(t.delay_ms * 1e6))
                elif t.kind == "reset":
                    delay = int(t.delay_ms * 1e6)
                    plan.reset_ns = delay if plan.reset_ns is None else min(plan.reset_ns, delay)
                active = True
            plan.limits = tuple(limits)
            was_stalled = pipe.plan is not None and pipe.plan.stall
            pipe.plan = plan if active else None
            if was_stalled and not plan.stall:
                pipe.flush()

    # -- ending
    def check_done(self) -> None:
        if self.up is not None and self.down is not None and self.up.done and self.down.done:
            self.close()

    def failed(self, why: str) -> None:
        log.info("fault proxy %s: connection %s: %s", self.proxy.name, self.peer, why)
        self.close(reset=True)

    def close(self, reset: bool = False) -> None:
        if self.closed:
            return
        self.closed = True
        self._stop_connecting()
        for handle in self.timers.values():
            handle.cancel()
        self.timers.clear()
        for pipe in self.pipes():
            pipe.unregister()
            pipe.queue.clear()
        for sock in (self.client, self.upstream):
            if sock is None:
                continue
            if reset:
                try:
                    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _LINGER_RST)
                except OSError:
                    pass
            sock.close()
        self.proxy.forget(self)


def _tune(sock: socket.socket) -> None:
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    enable_rx_timestamps(sock)


def _split_addr(addr: str, what: str) -> tuple[str, int]:
    host, sep, port = addr.rpartition(":")
    if not sep or not port.isdigit():
        raise ValueError(f"{what} address {addr!r} is not host:port")
    return host.strip("[]") or "0.0.0.0", int(port)


# ------------------------------------------------------------------------------ FaultProxy


class FaultProxy:
    """One terminal's proxy: listen (host:port) → upstream (host:port)."""

    def __init__(self, name: str, listen: str, upstream: str, *, sink: Sink | None = None,
                 terminal: str | None = None, ploop: ProxyLoop | None = None) -> None:
        self.name = name
        self.listen = listen
        self.upstream = upstream
        self.sink = sink
        self.terminal = terminal
        self.ploop = ploop or _SHARED
        self._listen_addr = _split_addr(listen, f"fault proxy {name}: listen")
        self._upstream_hp = _split_addr(upstream, f"fault proxy {name}: upstream")
        self.upstream_addr: tuple[int, Any] = (socket.AF_INET, self._upstream_hp)
        self.toxics: dict[str, Toxic] = {}
        self._ids = itertools.count(1)
        self._conns: set[_Conn] = set()
        self._listener: socket.socket | None = None
        self._address: tuple[str, int] | None = None
        self._started = False
        self._refusing = False
        self._total = 0
        self._bytes = {"up": 0, "down": 0}
        self._api_lock = threading.Lock()

    def __enter__(self) -> FaultProxy:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def __repr__(self) -> str:
        return f"FaultProxy({self.name!r}, {self.listen!r} -> {self.upstream!r})"

    # -- lifetime
    def start(self) -> FaultProxy:
        """Bind and listen; returns once connections are accepted (idempotent)."""
        with self._api_lock:
            if self._started:
                return self
            host, port = self._upstream_hp
            try:
                family, _, _, _, addr = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0]
            except OSError as e:
                raise InfrastructureError(f"fault proxy {self.name}: cannot resolve upstream "
                                          f"{self.upstream}: {e}") from e
            self.upstream_addr = (family, addr)
            lsock = self._bind(self._listen_addr[1])
            self.ploop.acquire()
            try:
                self.ploop.call(self._attach, lsock)
            except BaseException:
                lsock.close()
                self.ploop.release()
                raise
            self._started = True
            self._refusing = False
            return self

    def stop(self) -> None:
        """Close the listener and every live connection; idempotent."""
        with self._api_lock:
            if not self._started:
                return
            self._started = False
            try:
                self.ploop.call(self._shutdown)
            finally:
                self.ploop.release()

    def _bind(self, port: int) -> socket.socket:
        host = self._listen_addr[0]
        try:
            family, _, _, _, addr = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM,
                                                       flags=socket.AI_PASSIVE)[0]
            lsock = socket.socket(family, socket.SOCK_STREAM)
        except OSError as e:
            raise InfrastructureError(f"fault proxy {self.name}: cannot listen on "
                                      f"{self.listen}: {e}") from e
        try:
            lsock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            lsock.bind(addr)
            lsock.listen(128)
            lsock.setblocking(False)
        except OSError as e:
            lsock.close()
            raise InfrastructureError(f"fault proxy {self.name}: cannot listen on "
                                      f"{self.listen}: {e.strerror or e}") from e
        name = lsock.getsockname()
        self._address = (name[0], name[1])
        return lsock

    def _attach(self, lsock: socket.socket) -> None:
        self._listener = lsock
        assert self.ploop.loop is not None
        self.ploop.loop.add_reader(lsock.fileno(), self._accept)

    def _detach(self) -> None:
        if self._listener is not None:
            assert self.ploop.loop is not None
            self.ploop.loop.remove_reader(self._listener.fileno())
            self._listener.close()
            self._listener = None

    def _shutdown(self) -> None:
        self._detach()
        for conn in list(self._conns):
            conn.close()

    def _accept(self) -> None:
        lsock = self._listener
        for _ in range(32):
            if lsock is None:
                return
            try:
                client, addr = lsock.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as e:
                log.warning("fault proxy %s: accept failed: %s", self.name, e)
                return
            client.setblocking(False)
            _tune(client)
            conn = _Conn(self, client, f"{addr[0]}:{addr[1]}")
            self._conns.add(conn)
            self._total += 1
            for tid, toxic in self.toxics.items():
                conn.roll(tid, toxic)
            try:
                conn.connect()
            except OSError as e:
                conn._connect_failed(str(e))

    # -- toxics
    def add(self, toxic: Toxic) -> str:
        """Add a toxic (live connections too, from their next chunk on); returns its id."""
        if not isinstance(toxic, Toxic):
            raise TypeError(f"expected a Toxic, got {type(toxic).__name__}")
        tid = f"{toxic.kind}-{next(self._ids)}"
        self._on_loop(self._add, tid, toxic)
        return tid

    def _add(self, tid: str, toxic: Toxic) -> None:
        self.toxics[tid] = toxic
        for conn in list(self._conns):
            conn.roll(tid, toxic)
            if not conn.closed:
                conn.replan()

    def remove(self, toxic_id: str) -> None:
        """Remove a toxic; held data (stall) is released. Unknown ids are ignored."""
        self._on_loop(self._remove, [toxic_id])

    def clear(self) -> None:
        """Remove every toxic."""
        self._on_loop(lambda: self._remove(list(self.toxics)))

    def _remove(self, ids: list[str]) -> None:
        gone = [tid for tid in ids if self.toxics.pop(tid, None) is not None]
        if not gone:
            return
        for conn in list(self._conns):
            for tid in gone:
                conn.unapply(tid)
            conn.replan()
            for pipe in conn.pipes():
                pipe.flush()

    def active(self) -> dict[str, Toxic]:
        """The toxics now in force, by id."""
        return dict(self.toxics)

    def refuse(self, on: bool) -> None:
        """on: stop listening (connect → ECONNREFUSED) and close live connections;
        off: listen again on the same address."""
        with self._api_lock:
            if not self._started:
                raise InfrastructureError(f"fault proxy {self.name} is not started")
            if on == self._refusing:
                return
            if on:
                self.ploop.call(self._shutdown)
            else:
                assert self._address is not None
                lsock = self._bind(self._address[1])
                try:
                    self.ploop.call(self._attach, lsock)
                except BaseException:
                    lsock.close()
                    raise
            self._refusing = on

    def _on_loop(self, fn: Callable[..., T], *args: Any) -> T | None:
        if self._started and self.ploop.running:
            return self.ploop.call(fn, *args)
        return fn(*args)  # not started: nothing live, no loop thread to race with

    # -- bookkeeping (loop thread)
    def count(self, direction: str, n: int) -> None:
        self._bytes[direction] += n

    def forget(self, conn: _Conn) -> None:
        self._conns.discard(conn)

    def note_error(self, what: str) -> None:
        if self.sink is not None:
            try:
                self.sink.record(Event.now(EventKind.ERROR, f"proxy.{self.name}", self.terminal,
                                           error=what))
            except Exception:
                log.exception("fault proxy %s: sink failed", self.name)

    # -- inspection
    @property
    def address(self) -> tuple[str, int]:
        """The (host, port) the proxy listens on (port resolved when 0 was asked)."""
        if self._address is None:
            raise InfrastructureError(f"fault proxy {self.name} is not started")
        return self._address

    @property
    def refusing(self) -> bool:
        return self._refusing

    def stats(self) -> dict[str, int]:
        return {"connections_total": self._total, "connections_live": len(self._conns),
                "bytes_up": self._bytes["up"], "bytes_down": self._bytes["down"],
                "toxics": len(self.toxics)}
