"""The framed ECR link (STX data ETX LRC, ACK / NAK): the codec, arbitrary bytes, and the
driver's resends against a scripted port."""

from __future__ import annotations

import threading
from collections import deque

import pytest
import serial
from hypothesis import given, settings
from hypothesis import strategies as st

from rig.core import ecrframe
from rig.core.ecrframe import ACK, ETX, NAK, STX, Decoder, Frame, encode, lrc
from rig.core.errors import InstrumentError
from rig.drivers.ecr import EcrDriver
from rig.timeline.events import EventKind, ListSink


def test_frame_layout_and_lrc():
    f = encode("SALE 100")
    assert f[0] == STX and f[-2] == ETX and f[1:-2] == b"SALE 100"
    assert f[-1] == lrc(b"SALE 100" + bytes([ETX]))
    assert Decoder().feed(f) == [Frame("SALE 100", True)]
    bad = f[:-1] + bytes([f[-1] ^ 0xFF])
    assert Decoder().feed(bad) == [Frame("SALE 100", False)]
    with pytest.raises(ValueError):
        encode("a\x03b")


def test_decoder_skips_noise_and_splits_anywhere():
    stream = b"\xffnoise" + bytes([ACK]) + encode("OK READY") + b"\r\n" + bytes([NAK]) + encode("x")
    want = [ACK, Frame("OK READY", True), NAK, Frame("x", True)]
    for cut in range(len(stream)):
        d = Decoder()
        assert d.feed(stream[:cut]) + d.feed(stream[cut:]) == want
    d = Decoder()
    assert d.feed(bytes([STX]) + b"a" * (ecrframe.MAX_DATA + 5) + bytes([ETX, 0])) == []


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=3000))
def test_decoder_takes_any_bytes(data):
    d = Decoder()
    for item in d.feed(data):
        assert item in (ACK, NAK) or isinstance(item, Frame)


class FramedPort:
    """A scripted terminal end of a framed link: answers each frame the driver writes."""

    def __init__(self, replies: list[bytes]) -> None:
        self.replies = deque(replies)  # what to push after each write
        self.rx = bytearray()
        self.cv = threading.Condition()
        self.written: list[bytes] = []
        self.is_open = True

    @property
    def in_waiting(self) -> int:
        return len(self.rx)

    def read(self, size: int = 1) -> bytes:
        with self.cv:
            self.cv.wait_for(lambda: self.rx, 0.02)
            data = bytes(self.rx[:size])
            del self.rx[:size]
            return data

    def write(self, data: bytes) -> int:
        with self.cv:
            self.written.append(data)
            if self.replies:
                self.rx.extend(self.replies.popleft())
            self.cv.notify_all()
        return len(data)

    def flush(self) -> None:
        pass

    def reset_input_buffer(self) -> None:
        pass

    def close(self) -> None:
        self.is_open = False


def _driver(port: FramedPort, sink: ListSink, retries: int = 3) -> EcrDriver:
    d = EcrDriver("T2", "socket://127.0.0.1:1", sink, timeout_s=1.0, protocol="framed",
                  retries=retries, ack_s=0.1)
    d._port = port  # type: ignore[assignment]  # the scripted port stands in for pyserial's
    return d


def test_driver_resends_after_nak_and_naks_a_corrupt_reply():
    good = encode("OK SALE started")
    corrupt = good[:-1] + bytes([good[-1] ^ 1])
    port = FramedPort([bytes([NAK]), bytes([ACK]) + corrupt, good, b""])
    sink = ListSink()
    assert _driver(port, sink).command("SALE 100") == "SALE started"
    cmd = encode("SALE 100")
    assert port.written == [cmd, cmd, bytes([NAK]), bytes([ACK])]
    io = [e for e in sink.events if e.kind is EventKind.ECR_IO]
    assert io[0].data["attempts"] == 2 and io[0].data["reply"] == "OK SALE started"


def test_driver_gives_up_when_never_acknowledged():
    port = FramedPort([b"", b"", b""])
    with pytest.raises(InstrumentError, match="not acknowledged after 3 sends"):
        _driver(port, ListSink(), retries=2).command("STATUS")


def test_driver_survives_a_garbage_reply():
    port = FramedPort([bytes([ACK]) + b"\x00\xff\x02\xfe\xfd" + encode("OK READY"), b""])
    assert _driver(port, ListSink()).command("STATUS") == "READY"


def test_unknown_protocol_is_refused():
    with pytest.raises(ValueError, match="protocol 'x25'"):
        EcrDriver("T1", "loop://", ListSink(), protocol="x25")
    assert serial  # pyserial is what the driver opens in real use
