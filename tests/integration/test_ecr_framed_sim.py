"""The virtual terminal's framed ECR server over a real socket: ACK / NAK, resends of an
unacknowledged reply, noise, and the rig's driver against it."""

from __future__ import annotations

import asyncio
import socket
import threading
import time

import pytest

from rig.core.ecrframe import ACK, NAK, Decoder, Frame, encode
from rig.drivers.ecr import EcrDriver
from rig.sim.ecr_framed import ACK_S, FramedServer
from rig.timeline.events import ListSink

pytestmark = pytest.mark.integration


@pytest.fixture
def server():
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    replies: list[str] = []
    srv = FramedServer("T9 ecr", lambda text, rx: f"OK {text}", tx_stamps=True,
                       on_reply=lambda reply, tx: replies.append(reply), retries=2)
    asyncio.run_coroutine_threadsafe(srv.start("127.0.0.1", 0), loop).result(5)
    yield srv, replies
    asyncio.run_coroutine_threadsafe(srv.stop(), loop).result(5)
    loop.call_soon_threadsafe(loop.stop)
    thread.join(5)


def _read(sock: socket.socket, dec: Decoder, want: int, timeout: float = 2.0) -> list:
    got: list = []
    end = time.monotonic() + timeout
    sock.settimeout(0.05)
    while len(got) < want and time.monotonic() < end:
        try:
            data = sock.recv(4096)
        except TimeoutError:
            continue
        got += dec.feed(data)
    return got


def test_nak_on_bad_lrc_ack_and_resend_until_acknowledged(server):
    srv, replies = server
    with socket.create_connection(srv.address, timeout=2) as s:
        dec = Decoder()
        bad = encode("STATUS")
        s.sendall(b"\xff\x00junk" + bad[:-1] + bytes([bad[-1] ^ 0x55]))
        assert _read(s, dec, 1) == [NAK]
        s.sendall(encode("STATUS"))
        assert _read(s, dec, 2) == [ACK, Frame("OK STATUS", True)]
        # no ACK from us: the reply comes again after ACK_S, twice (retries=2), then no more
        t0 = time.monotonic()
        again = _read(s, dec, 2, timeout=4 * ACK_S)
        assert again == [Frame("OK STATUS", True)] * 2 and time.monotonic() - t0 >= 1.5 * ACK_S
        assert _read(s, dec, 1, timeout=1.5 * ACK_S) == []
        s.sendall(bytes([NAK]))  # a late NAK is ignored; the next command is served
        s.sendall(encode("SALE 100"))
        assert _read(s, dec, 2) == [ACK, Frame("OK SALE 100", True)]
        s.sendall(bytes([ACK]))
    assert srv.naks_sent == 1 and replies.count("OK STATUS") == 3


def test_driver_against_the_server(server):
    srv, _ = server
    host, port = srv.address
    d = EcrDriver("T9", f"socket://{host}:{port}", ListSink(), protocol="framed")
    try:
        assert [d.command(c) for c in ("STATUS", "SALE 100", "RESULT?")] == [
            "STATUS", "SALE 100", "RESULT?"]
    finally:
        d.close()
