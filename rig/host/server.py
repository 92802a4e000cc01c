"""The rig's acquirer host: an asyncio TCP server answering terminals' network messages.

One event-loop thread (``host-io``) accepts and serves every connection: a coroutine per
connection (:class:`rig.host.session.Session`), no thread per connection, so hundreds of idle,
half-sent or garbage connections cost a socket and a timer each and a terminal's sign-on is
still answered at once. Sockets are non-blocking with ``SO_TIMESTAMPNS`` (read with
``recvmsg``) and software TX stamps, so every request is stamped by the kernel (DESIGN §4)
however late the loop gets to it.

Limits (constructor; defaults from ``cfg.host``):

- ``idle_timeout_s`` (``read_timeout_s``): a connection with no frame for that long is closed
  (``idle timeout``) — unless the host withheld a reply on it (``no_response`` fault);
- ``frame_timeout_s`` (``min(read_timeout_s, 10 s)``): a frame must be complete that long
  after its first byte, else a protocol error closes the connection (no slow-loris);
- ``max_connections``: at the cap a new connection evicts the oldest idle one (never-served
  ones first, then the one whose last request is the oldest; HOST_DISCONNECT ``evicted``);
  only when every connection is busy with a request is the new one refused;
- what peers do wrong (protocol errors, evictions, refusals, accept failures) is logged once
  per kind and ``flood_interval_s`` (:class:`rig.host.flood.FloodLog`); every connection still
  records its own events.
"""

from __future__ import annotations

import asyncio
import errno
import itertools
import logging
import socket
import threading
from concurrent.futures import TimeoutError as FutureTimeout
from datetime import datetime
from types import TracebackType

from rig.config import LabConfig
from rig.core.clock import Stamp, WallToMono, now
from rig.core.errors import InfrastructureError
from rig.iso8583 import get_dialect
from rig.iso8583.framing import MAX_FRAME
from rig.timeline.events import Sink

from ..core.netstamp import enable_rx_timestamps
from .accounts import Accounts, Ledger
from .conn import HostConn
from .conntable import ConnTable
from .flood import FloodLog
from .rules import ResponseRules
from .session import Activity, HostContext, Session
from .state import HostStates
from .txn import TxnProcessor

log = logging.getLogger(__name__)

_JOIN_S = 5.0
_BACKLOG = 1024  # the kernel caps it at net.core.somaxconn
_ACCEPT_BATCH = 256  # accepts per wake-up of the listener, so a flood cannot starve the rest
_ACCEPT_PAUSE_S = 0.05  # out of file descriptors and nothing to evict: listen again after this
# The frame deadline and the connection cap come from the lab's host: section
# (HostConfig.frame_timeout_s, 10 s; max_connections, 512: far above a lab's terminals, and under
# the usual 1024 open files, since select()-based libraries in the same process break past fd 1023).


def _split_hostport(listen: str) -> tuple[str, int]:
    host, _, port = listen.rpartition(":")
    if not host or not port.isdigit():
        raise InfrastructureError(f"host: listen address {listen!r} is not host:port")
    return host.strip("[]"), int(port)


def _peer_text(addr: tuple[object, ...]) -> str:
    ip, port = str(addr[0]), addr[1]
    return f"[{ip}]:{port}" if ":" in ip else f"{ip}:{port}"


class _Tracked(Activity):
    """A session's place in the host's connection table."""

    def __init__(self, table: ConnTable[Session], cid: int) -> None:
        self._table = table
        self.cid = cid

    def busy(self) -> None:
        self._table.busy(self.cid)

    def served(self) -> None:
        self._table.served(self.cid)


class AcquirerHost:
    """Answers sign-on, sign-off, echo and (CUP) financial requests of the lab's terminals,
    recording events. Balances (:attr:`accounts`) and the :attr:`ledger` live as long as it.

    ``listen`` overrides ``cfg.host.listen`` (``"127.0.0.1:0"`` picks a free port; see
    :attr:`address`). Use as a context manager or call :meth:`start` / :meth:`stop`. The
    limits (``max_connections``, ``idle_timeout_s``, ``frame_timeout_s``,
    ``flood_interval_s``) are described in the module docstring.
    """

    def __init__(self, cfg: LabConfig, sink: Sink, listen: str | None = None, *,
                 rules: ResponseRules | None = None, max_frame: int = MAX_FRAME,
                 max_connections: int | None = None, idle_timeout_s: float | None = None,
                 frame_timeout_s: float | None = None, flood_interval_s: float = 10.0) -> None:
        self.cfg = cfg
        self.sink = sink
        self.listen = listen or cfg.host.listen
        self.dialect = get_dialect(cfg.host.dialect)
        self.rules = rules or ResponseRules(cfg.host)
        self.max_connections = (cfg.host.max_connections if max_connections is None
                                else max_connections)
        idle_s = cfg.host.read_timeout_s if idle_timeout_s is None else idle_timeout_s
        frame_s = (min(cfg.host.read_timeout_s, cfg.host.frame_timeout_s)
                   if frame_timeout_s is None else frame_timeout_s)
        if idle_s <= 0 or frame_s <= 0:
            raise ValueError(f"host: idle and frame timeouts must be > 0 s, got {idle_s} and "
                             f"{frame_s}")
        self.states = HostStates()
        self._stopping = threading.Event()
        self._rrn = itertools.count(1)
        self.accounts = Accounts.from_dir(cfg.host.cards_dir)
        self.ledger = Ledger()
        if not len(self.accounts):
            log.warning("host: no card profiles in %s; every card gets 14", cfg.host.cards_dir)
        self.txn = (TxnProcessor(self.dialect, self.states, self.rules, self.accounts,
                                 self.ledger, self._next_rrn)
                    if self.dialect.name == "cup" else None)
        self.flood = FloodLog(log, flood_interval_s)
        self._ctx = HostContext(
            dialect=self.dialect, sink=sink, rules=self.rules, states=self.states,
            mapper=WallToMono(),
            terminals={t.terminal_id: (name, bytes.fromhex(t.tmk), t.key_mode)
                       for name, t in cfg.terminals.items()},
            idle_timeout_s=idle_s, frame_timeout_s=frame_s,
            max_frame=max_frame, stopping=self._stopping, next_rrn=self._next_rrn,
            flood=self.flood, txn=self.txn,
        )
        self._table: ConnTable[Session] = ConnTable(self.max_connections)
        self._tasks: dict[int, asyncio.Task[None]] = {}
        self._lsock: socket.socket | None = None
        self._address: tuple[str, int] | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._flush_timer: asyncio.TimerHandle | None = None
        self._ids = itertools.count()

    # --- lifecycle --------------------------------------------------------------------------
    @property
    def address(self) -> tuple[str, int]:
        """The (host, port) actually listened on."""
        if self._address is None:
            raise InfrastructureError("host: not started; call start() first")
        return self._address

    @property
    def running(self) -> bool:
        return self._lsock is not None and not self._stopping.is_set()

    @property
    def connections(self) -> int:
        """Connections open now."""
        return len(self._table)

    def start(self) -> AcquirerHost:
        """Bind, listen and start serving; returns once the port is open."""
        if self._lsock is not None:
            return self
        host, port = _split_hostport(self.listen)
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        try:
            lsock = socket.create_server((host, port), family=family, backlog=_BACKLOG)
        except OSError as e:
            raise InfrastructureError(
                f"host: cannot listen on {self.listen}: {e.strerror or e}; is another host "
                f"(or `rig lab up`) already running there?") from e
        if not enable_rx_timestamps(lsock):  # also turns on kernel stamping before any SYN
            log.warning("host: SO_TIMESTAMPNS unavailable; requests get thread stamps")
        lsock.setblocking(False)
        self._stopping.clear()
        self._lsock = lsock
        host, port = lsock.getsockname()[:2]
        self._address = (str(host), int(port))
        loop = asyncio.new_event_loop()
        self._loop = loop
        ready = threading.Event()
        self._thread = threading.Thread(target=self._run_loop, args=(loop, lsock, ready),
                                        name="host-io", daemon=True)
        self._thread.start()
        ready.wait(_JOIN_S)
        log.info("host: %s dialect listening on %s:%d", self.dialect.name, *self.address)
        return self

    def stop(self) -> None:
        """Close the listener and every connection, stop the loop thread (idempotent)."""
        lsock, loop, thread = self._lsock, self._loop, self._thread
        if lsock is None or loop is None or self._stopping.is_set():
            return
        self._stopping.set()
        try:
            asyncio.run_coroutine_threadsafe(self._shutdown(), loop).result(_JOIN_S)
        except (FutureTimeout, RuntimeError) as e:  # RuntimeError: the loop died already
            log.warning("host: connections did not close within %.0f s: %s", _JOIN_S, e)
        loop.call_soon_threadsafe(loop.stop)
        if thread is not None:
            thread.join(_JOIN_S)
            if thread.is_alive():
                log.warning("host: loop thread did not stop within %.0f s", _JOIN_S)
        if thread is None or not thread.is_alive():
            loop.close()
        lsock.close()
        self.flood.flush(force=True)
        self._lsock = None
        self._loop = None
        log.info("host: stopped")

    def serve_forever(self) -> None:
        """Start (if needed) and serve until :meth:`stop` or Ctrl-C."""
        self.start()
        try:
            while not self._stopping.wait(1.0):
                pass
        except KeyboardInterrupt:
            pass
        finally:
            self.stop()

    def __enter__(self) -> AcquirerHost:
        return self.start()

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()

    # --- the loop thread --------------------------------------------------------------------
    def _run_loop(self, loop: asyncio.AbstractEventLoop, lsock: socket.socket,
                  ready: threading.Event) -> None:
        asyncio.set_event_loop(loop)
        loop.add_reader(lsock.fileno(), self._on_accept, lsock)
        self._flush_timer = loop.call_later(self.flood.interval_s, self._flush)
        ready.set()
        try:
            loop.run_forever()
        finally:
            if self._flush_timer is not None:
                self._flush_timer.cancel()

    async def _shutdown(self) -> None:
        lsock = self._lsock
        loop = asyncio.get_running_loop()
        if lsock is not None:
            loop.remove_reader(lsock.fileno())
        for session in self._table:
            session.end("host stopped")
        tasks = list(self._tasks.values())
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.wait(tasks, timeout=_JOIN_S - 1.0)

    def _flush(self) -> None:
        self.flood.flush()
        loop = self._loop
        if loop is not None and not self._stopping.is_set():
            self._flush_timer = loop.call_later(self.flood.interval_s, self._flush)

    def _on_accept(self, lsock: socket.socket) -> None:
        """The listener is readable: accept what is queued (a bounded batch)."""
        for _ in range(_ACCEPT_BATCH):
            if self._stopping.is_set():
                return
            try:
                sock, addr = lsock.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as e:
                self._accept_failed(lsock, e)
                return
            accepted = now()
            self._admit(sock, _peer_text(addr), accepted)

    def _accept_failed(self, lsock: socket.socket, e: OSError) -> None:
        if e.errno in (errno.ECONNABORTED, errno.EPROTO):
            return  # the peer gave up before we accepted: nothing to do
        self.flood.note("accept failures", logging.WARNING, "host: accept failed: %s", e)
        if e.errno in (errno.EMFILE, errno.ENFILE) and self._evict("out of file descriptors"):
            return  # a descriptor is free again: the listener is still readable, retry then
        loop = self._loop
        if loop is None:
            return
        fd = lsock.fileno()
        loop.remove_reader(fd)  # else a full fd table makes the readable listener spin

        def resume() -> None:
            if not self._stopping.is_set() and self._lsock is lsock:
                loop.add_reader(fd, self._on_accept, lsock)

        loop.call_later(_ACCEPT_PAUSE_S, resume)

    def _admit(self, sock: socket.socket, peer: str, accepted: Stamp) -> None:
        if self._table.full and not self._evict(f"{len(self._table)} connections open"):
            self.flood.note("refused connections", logging.WARNING,
                            "host: %d connections open, all busy; refusing %s",
                            len(self._table), peer)
            sock.close()
            return
        try:
            conn = HostConn(sock, self._ctx.mapper, idle_timeout_s=self._ctx.idle_timeout_s,
                            frame_timeout_s=self._ctx.frame_timeout_s)
        except OSError as e:  # e.g. the peer reset already
            self.flood.note("dropped connections", logging.WARNING,
                            "host: dropped connection from %s: %s", peer, e)
            sock.close()
            return
        cid = next(self._ids)
        session = Session(self._ctx, conn, peer, accepted, _Tracked(self._table, cid))
        self._table.add(cid, session)
        loop = asyncio.get_running_loop()
        task = loop.create_task(session.run(), name=f"host-conn-{peer}")
        self._tasks[cid] = task
        task.add_done_callback(lambda _t, cid=cid, s=session: self._forget(cid, s))

    def _forget(self, cid: int, session: Session) -> None:
        self._table.remove(cid)
        self._tasks.pop(cid, None)
        if not session.started:  # cancelled before its first step (evicted in the same batch)
            session.abandoned()

    def _evict(self, why: str) -> bool:
        """Close the oldest idle connection to make room; False when all are busy."""
        found = self._table.victim()
        if found is None:
            return False
        cid, session = found
        self.flood.note("evictions", logging.WARNING,
                        "host: %s (cap %d); evicting the oldest idle connection, %s",
                        why, self.max_connections, session.peer)
        session.end("evicted")
        self._table.remove(cid)  # its descriptor is closed already; the task ends it soon
        task = self._tasks.get(cid)
        if task is not None:
            task.cancel()
        return True

    def _next_rrn(self) -> str:
        """Retrieval reference number: yyjjjhh + a 5-digit sequence (12 characters)."""
        return f"{datetime.now():%y%j%H}{next(self._rrn) % 100000:05d}"
