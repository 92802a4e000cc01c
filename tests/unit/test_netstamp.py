"""Kernel RX/TX timestamps on loopback TCP sockets (Linux)."""

import socket
import time

import pytest

from rig.core.clock import ClockSource, WallToMono
from rig.core.netstamp import (
    ANC_SPACE,
    enable_rx_timestamps,
    enable_tx_timestamps,
    kernel_wall_ns,
    send_stamped,
)


@pytest.fixture
def pair():
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen()
    c = socket.create_connection(srv.getsockname())
    s, _ = srv.accept()
    yield c, s
    for x in (c, s, srv):
        x.close()


def test_tx_stamp_lies_within_sendall(pair):
    c, s = pair
    m = WallToMono()
    assert enable_rx_timestamps(s) and enable_tx_timestamps(s)
    for i in range(20):
        c.sendall(b"ping")
        data, anc, flags, _ = s.recvmsg(64, ANC_SPACE)
        assert data == b"ping" and not flags & socket.MSG_CTRUNC
        assert kernel_wall_ns(anc) is not None  # RX still stamped with TX stamping on
        before = time.monotonic_ns()
        st = send_stamped(s, b"pong%02d" % i, m)
        after = time.monotonic_ns()
        assert st.clock == ClockSource.KERNEL
        assert before - 200_000 <= st.mono_ns <= after + 200_000
        assert c.recv(64) == b"pong%02d" % i


def test_send_without_tx_stamping_falls_back_to_thread(pair):
    c, s = pair
    st = send_stamped(s, b"x", WallToMono(), wait_s=0.001)
    assert st.clock == ClockSource.THREAD
    assert c.recv(8) == b"x"
