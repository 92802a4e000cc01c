"""A TCP server of text lines standing in for one serial port of a virtual device.

Like a USB-serial adapter it listens whether or not the device behind it has power. Lines
written by the device go to every connected client (``\\r\\n`` terminated); lines read from
a client (``\\r\\n`` or ``\\n`` terminated) go to an optional handler, with the kernel's
receive stamp of the segment that completed the line; its reply is written back to that
client only; lines are written in ``encoding`` (read as UTF-8). With ``tx_stamps`` every write is stamped with the kernel's transmit stamp
(:mod:`rig.sim.wire`): :meth:`LineServer.broadcast` returns when the line left, ``on_reply``
hears when a reply did.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from urllib.parse import urlsplit

from ..core.errors import ConfigError
from .wire import Conn, LineTooLong, Server, WireStamp, earliest, thread_stamp

log = logging.getLogger(__name__)

MAX_LINE = 4096
MAX_BACKLOG = 1 << 20  # bytes queued for a client that does not read; beyond it, drop the client


def parse_socket_url(url: str, what: str) -> tuple[str, int]:
    """``socket://host:port`` (the pyserial URL the rig's drivers use) -> (host, port)."""
    parts = urlsplit(url)
    if parts.scheme != "socket" or not parts.hostname or parts.port is None:
        raise ConfigError(f"{what}: {url!r}: the virtual lab serves only socket://host:port URLs")
    return parts.hostname, parts.port


def parse_hostport(text: str) -> tuple[str, int]:
    """``host:port`` -> (host, port)."""
    host, _, port = text.rpartition(":")
    return host, int(port)


Handler = Callable[[str, WireStamp], str | None]
OnReply = Callable[[str, WireStamp], None]


class LineServer:
    """Line-oriented TCP server; ``handler(line, rx) -> reply | None`` runs in the event loop."""

    def __init__(self, name: str, handler: Handler | None = None, eol: bytes = b"\r\n", *,
                 tx_stamps: bool = False, on_reply: OnReply | None = None,
                 encoding: str = "utf-8") -> None:
        self.name = name
        self.encoding = encoding  # of the lines written (a GBK console writes GBK bytes)
        self._handler = handler
        self._on_reply = on_reply
        self._eol = eol
        self._server = Server(name, self._serve, tx_stamps=tx_stamps)
        self._started = False
        self._clients: list[Conn] = []  # in the order they connected
        self.address: tuple[str, int] | None = None

    async def start(self, host: str, port: int) -> None:
        await self._server.start(host, port)
        self._started = True
        self.address = self._server.address
        log.debug("%s listening on %s:%d", self.name, *self.address)

    @property
    def clients(self) -> int:
        return len(self._clients)

    def broadcast(self, line: str) -> WireStamp:
        """Write one line to every connected client; when it left: the earliest kernel TX stamp
        over the clients, else the thread's stamp (also when no client is connected)."""
        data = line.encode(self.encoding, "replace") + self._eol
        stamps = [st for c in list(self._clients) if (st := self._write(c, data)) is not None]
        return earliest(stamps) or thread_stamp()

    def _write(self, c: Conn, data: bytes) -> WireStamp | None:
        if c.closed:
            self._drop(c)
            return None
        if c.buffered > MAX_BACKLOG:
            log.warning("%s: client %s does not read; dropping it", self.name, c.peer)
            self._drop(c)
            c.close()
            return None
        return c.write(data)

    def _drop(self, c: Conn) -> None:
        if c in self._clients:
            self._clients.remove(c)

    async def _serve(self, c: Conn) -> None:
        log.debug("%s: client %s connected", self.name, c.peer)
        self._clients.append(c)
        try:
            while True:
                try:
                    raw, rx = await c.readline(MAX_LINE)
                except LineTooLong:
                    continue
                if not raw:
                    break
                text = raw.decode("utf-8", "replace").strip()
                if not text or self._handler is None:
                    continue
                try:
                    reply = self._handler(text, rx)
                except Exception:
                    log.exception("%s: handler failed on %r", self.name, text)
                    reply = "ERR 99 internal error"
                if reply is not None:
                    tx = self._write(c, reply.encode("utf-8", "replace") + self._eol)
                    if tx is not None and self._on_reply is not None:
                        self._on_reply(reply, tx)
        finally:
            self._drop(c)
            log.debug("%s: client %s gone", self.name, c.peer)

    async def stop(self) -> None:
        if not self._started:
            return
        self._started = False
        self._clients.clear()
        await self._server.stop()
