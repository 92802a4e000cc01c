"""Serve an emulated :class:`EmvCard` to pcscd through vsmartcard's vpcd reader driver.

The Debian package ``vsmartcard-vpcd`` adds the reader "Virtual PCD 00 00" to pcscd
(``/etc/reader.conf.d/vpcd``: ``CHANNELID 0x8C7B`` = TCP port 35963); its driver listens there
for one virtual card (the vicc side, which this module is). Wire format, both directions:
2-byte big-endian length + payload. One-byte payloads from vpcd are control messages
(``00`` power off, ``01`` power on, ``02`` reset, ``04`` get ATR, the only one answered);
anything longer is a C-APDU, answered with the R-APDU.

pcscd polls presence about every 0.4 s with "get ATR"; it sees a card leave only if a poll
finds the connection gone. So :meth:`VpcdCard.remove` / :meth:`VpcdCard.insert` close the
connection and stay away ``swap_gap_s`` (> one poll) before the next card connects. A mute
chip answers presence polls with its ATR (it is in the slot) but answers the "get ATR" that
follows a power-on with an empty payload: vpcd reports the card gone, pcscd fails to power it
up and flags the reader ``SCARD_STATE_MUTE`` (connect: "Card is unpowered"), as with a real
mute chip; the bridge then reconnects so the card stays in the slot. A card without a chip
(magstripe only, or contactless only) in this contact reader is the same: present, nothing
answers the reset.

With ``contactless=True`` the reader stands for an NFC field: the card is powered as a
contactless card (PPSE, its contactless data objects, a PC/SC pseudo-ATR), and a card without
an antenna is simply not there (the bridge never connects, the slot stays empty).
``transcript``, when given, receives every (C-APDU, R-APDU) pair the card answered, so a
caller can see what the card showed the reader.
"""

from __future__ import annotations

import contextlib
import logging
import socket
import threading
import time
from collections.abc import Callable

from .emv import EmvCard

log = logging.getLogger(__name__)

VPCD_HOST = "127.0.0.1"
VPCD_PORT = 35963  # CHANNELID 0x8C7B in /etc/reader.conf.d/vpcd
VPCD_READER = "Virtual PCD 00 00"
CTRL_OFF, CTRL_ON, CTRL_RESET, CTRL_ATR = 0x00, 0x01, 0x02, 0x04


class VpcdCard:
    """A virtual card in the vpcd reader, served from a background thread.

    ``start()`` keeps (re)connecting to vpcd while a card is inserted; ``insert(card)`` swaps
    the card (the reader sees the old one leave), ``remove()`` takes it out, ``stop()`` ends.
    """

    def __init__(self, card: EmvCard | None, host: str = VPCD_HOST, port: int = VPCD_PORT,
                 *, retry_s: float = 0.2, swap_gap_s: float = 1.0, contactless: bool = False,
                 transcript: Callable[[bytes, bytes], None] | None = None) -> None:
        self.host, self.port, self.retry_s, self.swap_gap_s = host, port, retry_s, swap_gap_s
        self.contactless = contactless
        self._transcript = transcript
        self._card = card
        self._gap_until = 0.0
        self._cond = threading.Condition()
        self._sock: socket.socket | None = None
        self._stopping = False
        self._thread: threading.Thread | None = None
        self.connected = threading.Event()
        self.powered = threading.Event()  # the reader powered the current card (mute: tried)

    def __repr__(self) -> str:
        field = ", contactless" if self.contactless else ""
        return f"VpcdCard({self._card!r}, {self.host}:{self.port}{field})"

    def _present(self, card: EmvCard | None) -> bool:
        """The card is in this reader at all (a card without an antenna is not in a field)."""
        if card is None:
            return False
        return not self.contactless or card.profile.has_contactless

    @property
    def card(self) -> EmvCard | None:
        return self._card

    # ---- control
    def start(self) -> VpcdCard:
        with self._cond:
            if self._thread is not None:
                return self
            self._stopping = False
            self._thread = threading.Thread(target=self._run, name=f"vpcd:{self.port}",
                                            daemon=True)
            self._thread.start()
        return self

    def stop(self, timeout_s: float = 5.0) -> None:
        """End the bridge; with a card in the reader, returns after ``swap_gap_s`` so pcscd
        has seen the slot empty (the next bridge on this port starts clean)."""
        with self._cond:
            self._stopping = True
            was_in = self._sock is not None
            self._drop(gap=False)
            self._cond.notify_all()
            thread, self._thread = self._thread, None
        if thread is not None:
            thread.join(timeout_s)
        if was_in:
            time.sleep(self.swap_gap_s)

    def insert(self, card: EmvCard) -> None:
        """Put ``card`` in the reader (replacing whatever is there)."""
        with self._cond:
            self._card = card
            self._drop()
            self._cond.notify_all()

    def remove(self) -> None:
        """Take the card out: the connection closes, pcscd sees the slot empty."""
        with self._cond:
            self._card = None
            self._drop()
            self._cond.notify_all()

    def wait_connected(self, timeout_s: float) -> bool:
        return self.connected.wait(timeout_s)

    def wait_powered(self, timeout_s: float) -> bool:
        """True once pcscd has powered the current card (for a mute card: tried to), i.e.
        the reader's state reflects it."""
        return self.powered.wait(timeout_s)

    def __enter__(self) -> VpcdCard:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # ---- worker
    def _drop(self, *, gap: bool = True, keep_powered: bool = False) -> None:
        """Close the connection (caller holds the lock); ``gap``: stay away a poll or two."""
        sock, self._sock = self._sock, None
        self.connected.clear()
        if not keep_powered:
            self.powered.clear()
        if sock is not None:
            if gap:
                self._gap_until = time.monotonic() + self.swap_gap_s
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
            sock.close()

    def _set_powered(self, sock: socket.socket) -> None:
        """Powered, unless this connection was already dropped (a swap raced a poll)."""
        with self._cond:
            if self._sock is sock:
                self.powered.set()

    def _run(self) -> None:
        refused_logged = False
        while True:
            with self._cond:
                while not self._stopping and not self._present(self._card):
                    self._cond.wait()
                if self._stopping:
                    return
                gap = self._gap_until - time.monotonic()
                if gap > 0:  # let pcscd see the slot empty first
                    self._cond.wait(gap)
                    continue
                card = self._card
            try:
                sock = socket.create_connection((self.host, self.port), timeout=2.0)
            except OSError as e:
                if not refused_logged:
                    log.info("vpcd %s:%d not reachable (%s); is pcscd running with the "
                             "vpcd driver? retrying", self.host, self.port, e)
                    refused_logged = True
                with self._cond:
                    self._cond.wait(self.retry_s)
                continue
            refused_logged = False
            sock.settimeout(None)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            with self._cond:
                if self._stopping or self._card is not card:
                    sock.close()
                    continue
                self._sock = sock
                self.connected.set()
            log.debug("vpcd: connected to %s:%d", self.host, self.port)
            assert card is not None
            mute = False
            try:
                mute = self._serve(sock, card)
            except OSError as e:
                log.debug("vpcd: connection ended: %s", e)
            finally:
                with self._cond:
                    if self._sock is sock:  # ended by the reader (or mute): come back soon
                        self._drop(gap=False, keep_powered=mute)
                    else:
                        sock.close()
                    if not self._stopping:
                        self._cond.wait(self.retry_s / 4)

    def _serve(self, sock: socket.socket, card: EmvCard) -> bool:
        """Answer vpcd until the connection ends; True when a mute card hung up after the
        reader's power-on (so the caller reconnects at once)."""
        powered = False
        presence_atr = bytes.fromhex(card.profile.atr)
        card.power_up(contactless=self.contactless)
        while True:
            head = _recv_exactly(sock, 2)
            if head is None:
                log.debug("vpcd: closed")
                return False
            msg = _recv_exactly(sock, int.from_bytes(head, "big"))
            if msg is None:
                return False
            if len(msg) == 1:
                ctrl = msg[0]
                log.debug("vpcd: control %02X", ctrl)
                if ctrl in (CTRL_ON, CTRL_RESET):
                    powered = True
                    card.power_up(contactless=self.contactless)
                elif ctrl == CTRL_OFF:
                    powered = False
                    card.reset()
                elif ctrl == CTRL_ATR:
                    atr = card.atr()
                    if atr is not None:
                        _send(sock, atr)
                    elif not powered:  # mute or chipless, but in the slot: polls see it
                        _send(sock, presence_atr)
                    else:  # nothing answers the reset: vpcd drops us, we come back
                        _send(sock, b"")
                        self._set_powered(sock)
                        return True
                    if powered:
                        self._set_powered(sock)
                else:
                    log.warning("vpcd: unknown control byte %02X", ctrl)
                continue
            rapdu = card.transmit(msg)
            if self._transcript is not None:
                self._transcript(bytes(msg), rapdu)
            log.debug("vpcd: APDU INS %02X -> SW %s", msg[1] if len(msg) > 1 else 0,
                      rapdu[-2:].hex().upper())
            _send(sock, rapdu)


def _recv_exactly(sock: socket.socket, n: int) -> bytes | None:
    buf = bytearray()
    while len(buf) < n:
        chunk = sock.recv(n - len(buf))
        if not chunk:
            return None
        buf += chunk
    return bytes(buf)


def _send(sock: socket.socket, payload: bytes) -> None:
    sock.sendall(len(payload).to_bytes(2, "big") + payload)
