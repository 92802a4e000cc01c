"""The framed ECR link of a virtual terminal: ``STX data ETX LRC`` with ACK / NAK and resends.

Serves what :class:`rig.drivers.ecr.EcrDriver` speaks with ``protocol="framed"``
(:mod:`rig.core.ecrframe`): a frame with a good LRC is ACKed, then handed to the terminal's
handler (the same text commands as the line protocol), its reply sent as a frame and sent
again after a NAK or when no ACK comes within :data:`ACK_S` (``retries`` resends); a frame with
a bad LRC is NAKed. Any bytes are safe: noise between frames is skipped. The interface is
:class:`rig.sim.lines.LineServer`'s (``start``, ``stop``, ``clients``), so the terminal picks
one or the other by its profile.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging

from ..core import ecrframe
from .lines import Handler, OnReply
from .wire import Conn, Server, WireStamp, thread_stamp

log = logging.getLogger(__name__)

ACK_S = 0.5  # how long the terminal waits for the ECR's ACK of a reply


class FramedServer:
    """Framed ECR server; ``handler(text, rx) -> reply | None`` runs in the event loop."""

    def __init__(self, name: str, handler: Handler, *, tx_stamps: bool = False,
                 on_reply: OnReply | None = None, retries: int = 3) -> None:
        self.name = name
        self._handler = handler
        self._on_reply = on_reply
        self.retries = retries
        self._server = Server(name, self._serve, tx_stamps=tx_stamps)
        self._started = False
        self._clients: list[Conn] = []
        self.address: tuple[str, int] | None = None
        self.naks_sent = 0  # diagnostics (tests)

    async def start(self, host: str, port: int) -> None:
        await self._server.start(host, port)
        self._started = True
        self.address = self._server.address

    @property
    def clients(self) -> int:
        return len(self._clients)

    async def stop(self) -> None:
        if not self._started:
            return
        self._started = False
        self._clients.clear()
        await self._server.stop()

    async def _serve(self, c: Conn) -> None:
        self._clients.append(c)
        items: asyncio.Queue[tuple[ecrframe.Item, WireStamp] | None] = asyncio.Queue()
        reader = asyncio.get_running_loop().create_task(self._read(c, items))
        try:
            while True:
                got = await items.get()
                if got is None:
                    break
                item, rx = got
                if not isinstance(item, ecrframe.Frame):
                    continue  # a late ACK / NAK
                if not item.ok:
                    self.naks_sent += 1
                    c.write(bytes([ecrframe.NAK]))
                    continue
                c.write(bytes([ecrframe.ACK]))
                text = item.text.strip()
                if not text:
                    continue
                try:
                    reply = self._handler(text, rx)
                except Exception:
                    log.exception("%s: handler failed on %r", self.name, text)
                    reply = "ERR 99 internal error"
                if reply is not None and not await self._send(c, reply, items):
                    break
        finally:
            reader.cancel()
            with contextlib.suppress(BaseException):
                await reader
            if c in self._clients:
                self._clients.remove(c)

    async def _read(self, c: Conn, items: asyncio.Queue) -> None:
        decoder = ecrframe.Decoder()
        try:
            while True:
                data, stamp = await c.read()
                if not data:
                    break
                for item in decoder.feed(data):
                    items.put_nowait((item, stamp or thread_stamp()))
        finally:
            items.put_nowait(None)

    async def _send(self, c: Conn, reply: str, items: asyncio.Queue) -> bool:
        """Send ``reply`` until ACKed (or out of resends); False when the client went away."""
        frame = ecrframe.encode(reply.replace("\x02", " ").replace("\x03", " "))
        deferred: list[tuple[ecrframe.Item, WireStamp]] = []
        try:
            return await self._until_acked(c, reply, frame, items, deferred)
        finally:
            for d in deferred:  # commands that came before the ACK: handled next
                items.put_nowait(d)

    async def _until_acked(self, c: Conn, reply: str, frame: bytes, items: asyncio.Queue,
                           deferred: list) -> bool:
        for _ in range(self.retries + 1):
            tx = c.write(frame)
            if tx is not None and self._on_reply is not None:
                self._on_reply(reply, tx)
            loop = asyncio.get_running_loop()
            deadline = loop.time() + ACK_S
            while True:
                try:
                    got = await asyncio.wait_for(items.get(), max(0.0, deadline - loop.time()))
                except TimeoutError:
                    break  # no ACK: send again
                if got is None:
                    return False
                item, _ = got
                if item == ecrframe.ACK:
                    return True
                if item == ecrframe.NAK:
                    break
                deferred.append(got)  # a new command before the ACK: keep it for later
        log.warning("%s: reply %r not acknowledged by %s", self.name, reply, c.peer)
        return True
