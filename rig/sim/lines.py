"""A TCP server of text lines standing in for one serial port of a virtual device.

Like a USB-serial adapter it listens whether or not the device behind it has power. Lines
written by the device go to every connected client (``\\r\\n`` terminated); lines read from
a client (``\\r\\n`` or ``\\n`` terminated) go to an optional handler whose reply is written
back to that client only.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from urllib.parse import urlsplit

from ..core.errors import ConfigError

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


class LineServer:
    """Line-oriented TCP server; ``handler(line) -> reply | None`` runs in the event loop."""

    def __init__(self, name: str, handler: Callable[[str], str | None] | None = None,
                 eol: bytes = b"\r\n") -> None:
        self.name = name
        self._handler = handler
        self._eol = eol
        self._server: asyncio.Server | None = None
        self._clients: set[asyncio.StreamWriter] = set()
        self.address: tuple[str, int] | None = None

    async def start(self, host: str, port: int) -> None:
        self._server = await asyncio.start_server(self._serve, host, port, limit=MAX_LINE)
        sock = self._server.sockets[0].getsockname()
        self.address = (sock[0], sock[1])
        log.debug("%s listening on %s:%d", self.name, *self.address)

    @property
    def clients(self) -> int:
        return len(self._clients)

    def broadcast(self, line: str) -> None:
        """Write one line to every connected client; returns once the writes returned."""
        data = line.encode("utf-8", "replace") + self._eol
        for w in list(self._clients):
            self._write(w, data)

    def _write(self, w: asyncio.StreamWriter, data: bytes) -> None:
        if w.is_closing():
            self._clients.discard(w)
            return
        if w.transport.get_write_buffer_size() > MAX_BACKLOG:
            log.warning("%s: client %s does not read; dropping it", self.name,
                        w.get_extra_info("peername"))
            self._clients.discard(w)
            w.transport.abort()
            return
        w.write(data)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        peer = writer.get_extra_info("peername")
        log.debug("%s: client %s connected", self.name, peer)
        self._clients.add(writer)
        try:
            while True:
                try:
                    raw = await reader.readline()
                except (ValueError, asyncio.LimitOverrunError):  # line too long: skip it
                    continue
                except ConnectionError:
                    break
                if not raw:
                    break
                text = raw.decode("utf-8", "replace").strip()
                if not text or self._handler is None:
                    continue
                try:
                    reply = self._handler(text)
                except Exception:
                    log.exception("%s: handler failed on %r", self.name, text)
                    reply = "ERR 99 internal error"
                if reply is not None:
                    self._write(writer, reply.encode("utf-8", "replace") + self._eol)
        finally:
            self._clients.discard(writer)
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()
            log.debug("%s: client %s gone", self.name, peer)

    async def stop(self) -> None:
        if self._server is None:
            return
        self._server.close()
        for w in list(self._clients):
            w.close()
        self._clients.clear()
        with contextlib.suppress(Exception):
            await asyncio.wait_for(self._server.wait_closed(), 2.0)
        self._server = None
