"""The rig's acquirer host: a threaded TCP server answering terminals' network messages.

One accept thread plus one thread per connection on blocking sockets with SO_TIMESTAMPNS,
so every request is stamped by the kernel (DESIGN §4) however busy the Python process is.
"""

from __future__ import annotations

import itertools
import logging
import socket
import threading
from datetime import datetime
from types import TracebackType

from rig.config import LabConfig
from rig.core.clock import Stamp, WallToMono, now
from rig.core.errors import InfrastructureError
from rig.iso8583 import get_dialect
from rig.iso8583.framing import MAX_FRAME
from rig.timeline.events import Sink

from ..core.netstamp import enable_rx_timestamps, enable_tx_timestamps
from .accounts import Accounts, Ledger
from .rules import ResponseRules
from .session import HostContext, Session
from .state import HostStates
from .txn import TxnProcessor

log = logging.getLogger(__name__)

_ACCEPT_POLL_S = 0.5  # upper bound on how long stop() waits for the accept thread to notice
_JOIN_S = 5.0


def _split_hostport(listen: str) -> tuple[str, int]:
    host, _, port = listen.rpartition(":")
    if not host or not port.isdigit():
        raise InfrastructureError(f"host: listen address {listen!r} is not host:port")
    return host.strip("[]"), int(port)


def _peer_text(addr: tuple[object, ...]) -> str:
    ip, port = str(addr[0]), addr[1]
    return f"[{ip}]:{port}" if ":" in ip else f"{ip}:{port}"


class AcquirerHost:
    """Answers sign-on, sign-off, echo and (CUP) financial requests of the lab's terminals,
    recording events. Balances (:attr:`accounts`) and the :attr:`ledger` live as long as it.

    ``listen`` overrides ``cfg.host.listen`` (``"127.0.0.1:0"`` picks a free port; see
    :attr:`address`). Use as a context manager or call :meth:`start` / :meth:`stop`.
    """

    def __init__(self, cfg: LabConfig, sink: Sink, listen: str | None = None, *,
                 rules: ResponseRules | None = None, max_frame: int = MAX_FRAME,
                 max_connections: int = 256) -> None:
        self.cfg = cfg
        self.sink = sink
        self.listen = listen or cfg.host.listen
        self.dialect = get_dialect(cfg.host.dialect)
        self.rules = rules or ResponseRules(cfg.host)
        self.max_connections = max_connections
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
        self._ctx = HostContext(
            dialect=self.dialect, sink=sink, rules=self.rules, states=self.states,
            mapper=WallToMono(),
            terminals={t.terminal_id: (name, bytes.fromhex(t.tmk), t.key_mode)
                       for name, t in cfg.terminals.items()},
            idle_timeout_s=cfg.host.read_timeout_s, frame_timeout_s=cfg.host.read_timeout_s,
            max_frame=max_frame, stopping=self._stopping, next_rrn=self._next_rrn,
            txn=self.txn,
        )
        self._lock = threading.Lock()
        self._lsock: socket.socket | None = None
        self._address: tuple[str, int] | None = None
        self._accept_thread: threading.Thread | None = None
        self._conns: dict[int, tuple[socket.socket, threading.Thread]] = {}
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

    def start(self) -> AcquirerHost:
        """Bind, listen and start accepting; returns once the port is open."""
        if self._lsock is not None:
            return self
        host, port = _split_hostport(self.listen)
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        try:
            lsock = socket.create_server((host, port), family=family, backlog=64)
        except OSError as e:
            raise InfrastructureError(
                f"host: cannot listen on {self.listen}: {e.strerror or e}; is another host "
                f"(or `rig lab up`) already running there?") from e
        if not enable_rx_timestamps(lsock):  # also turns on kernel stamping before any SYN
            log.warning("host: SO_TIMESTAMPNS unavailable; requests get thread stamps")
        lsock.settimeout(_ACCEPT_POLL_S)
        self._stopping.clear()
        self._lsock = lsock
        host, port = lsock.getsockname()[:2]
        self._address = (str(host), int(port))
        self._accept_thread = threading.Thread(target=self._accept_loop, name="host-accept",
                                               daemon=True)
        self._accept_thread.start()
        log.info("host: %s dialect listening on %s:%d", self.dialect.name, *self.address)
        return self

    def stop(self) -> None:
        """Close the listener and every connection, join all threads (idempotent)."""
        lsock = self._lsock
        if lsock is None or self._stopping.is_set():
            return
        self._stopping.set()
        try:
            lsock.shutdown(socket.SHUT_RDWR)  # wakes accept() on Linux
        except OSError:
            pass
        if self._accept_thread is not None:
            self._accept_thread.join(_JOIN_S)
        lsock.close()
        with self._lock:
            conns = list(self._conns.values())
        for sock, _ in conns:
            try:
                sock.shutdown(socket.SHUT_RDWR)  # wakes the blocked recvmsg
            except OSError:
                pass
        for _, thread in conns:
            thread.join(_JOIN_S)
            if thread.is_alive():
                log.warning("host: %s did not stop within %.0f s", thread.name, _JOIN_S)
        self._lsock = None
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

    # --- threads ----------------------------------------------------------------------------
    def _accept_loop(self) -> None:
        lsock = self._lsock
        assert lsock is not None
        while not self._stopping.is_set():
            try:
                sock, addr = lsock.accept()
                accepted = now()
            except TimeoutError:
                continue
            except OSError as e:
                if not self._stopping.is_set():
                    log.error("host: accept failed: %s", e)
                    self._stopping.wait(0.1)
                continue
            peer = _peer_text(addr)
            try:
                self._serve(sock, peer, accepted)
            except Exception as e:  # e.g. the peer reset already, or no thread left
                log.warning("host: dropped connection from %s: %s", peer, e)
                sock.close()

    def _serve(self, sock: socket.socket, peer: str, accepted: Stamp) -> None:
        enable_rx_timestamps(sock)
        enable_tx_timestamps(sock)  # responses get the kernel's transmit stamp
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        conn_id = next(self._ids)
        thread = threading.Thread(target=self._run_session, args=(conn_id, sock, peer, accepted),
                                  name=f"host-conn-{peer}", daemon=True)
        with self._lock:
            if self._stopping.is_set():
                sock.close()
                return
            if len(self._conns) >= self.max_connections:
                log.warning("host: %d connections open; refusing %s", len(self._conns), peer)
                sock.close()
                return
            self._conns[conn_id] = (sock, thread)
        try:
            thread.start()
        except BaseException:
            with self._lock:
                self._conns.pop(conn_id, None)
            raise

    def _run_session(self, conn_id: int, sock: socket.socket, peer: str,
                     accepted: Stamp) -> None:
        try:
            Session(self._ctx, sock, peer, accepted).run()
        finally:
            with self._lock:
                self._conns.pop(conn_id, None)

    def _next_rrn(self) -> str:
        """Retrieval reference number: yyjjjhh + a 5-digit sequence (12 characters)."""
        return f"{datetime.now():%y%j%H}{next(self._rrn) % 100000:05d}"
