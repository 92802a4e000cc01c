"""A robot that answers garbage mid-sale: a clear InstrumentError, the sale cycle marked aborted,
the terminal cancelled and still usable, the store consistent."""

from __future__ import annotations

import socket
import threading

import pytest

from rig import open_local
from rig.core.errors import InstrumentError
from tests.labcfg import free_port, virtual_config, write_config

pytestmark = pytest.mark.integration


class GarbageGrbl:
    """Enough GRBL to be opened; the first motion line gets garbage back."""

    def __init__(self) -> None:
        self.srv = socket.create_server(("127.0.0.1", free_port()))
        self.port = self.srv.getsockname()[1]
        self.lines: list[str] = []
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.srv.accept()
            except OSError:
                return
            threading.Thread(target=self._conn, args=(conn,), daemon=True).start()

    def _conn(self, c: socket.socket) -> None:
        f = c.makefile("rb")
        c.sendall(b"\r\nGrbl 1.1h ['$' for help]\r\n")
        buf = b""
        while True:
            b = f.read1(256) if hasattr(f, "read1") else f.read(1)
            if not b:
                return
            buf += b
            while b"?" in buf and b"\n" not in buf.split(b"?", 1)[0]:
                buf = buf.replace(b"?", b"", 1)
                c.sendall(b"<Idle|MPos:0.000,0.000,0.000|FS:0,0>\r\n")
            while b"\n" in buf:
                line, buf = buf.split(b"\n", 1)
                text = line.decode(errors="replace").strip()
                self.lines.append(text)
                if text == "$$":
                    c.sendall(b"$110=120000.000\r\n$111=120000.000\r\n$112=120000.000\r\n"
                              b"$120=5000.000\r\n$121=5000.000\r\n$122=5000.000\r\nok\r\n")
                elif text.startswith(("G0", "G1")):
                    c.sendall(b"\x00\xff\xfe garbage \x07\r\n")
                else:
                    c.sendall(b"ok\r\n")

    def close(self) -> None:
        self.srv.close()


def test_robot_garbage_mid_sale(tmp_path):
    fake = GarbageGrbl()
    cfg = virtual_config(tmp_path, time_scale=0.1)
    robot = cfg.instruments["robot1"].model_copy(update={"port": f"socket://127.0.0.1:{fake.port}",
                                                         "timeout_s": 2.0})
    cfg = cfg.model_copy(update={"instruments": {**cfg.instruments, "robot1": robot}})
    path = write_config(cfg, tmp_path / "lab.yaml")
    try:
        with open_local(path, results=tmp_path / "r") as rig:
            rig.ensure_ready("T1")
            with pytest.raises(InstrumentError, match=r"robot1 \(socket://127\.0\.0\.1:\d+\)"):
                rig.sale("T1", amount="1.00", card="cup_debit", entry="chip")
            rows = [tuple(r) for r in rig.store.query(
                "SELECT kind, state FROM cycles WHERE terminal='T1' ORDER BY id")]
            assert rows[-1] == ("sale", "aborted")
            assert rig.ecrs["T1"].command("STATUS").startswith("READY")  # sale was cancelled
            assert rig.store.query("SELECT count(*) FROM sales")[0][0] == 0
    finally:
        fake.close()
