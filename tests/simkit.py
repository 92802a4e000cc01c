"""Test kit for the virtual lab: a tiny fake CUP host and raw SCPI / line clients."""

from __future__ import annotations

import queue
import socket
import threading
import time
from datetime import datetime
from typing import Any

from rig.config import LabConfig
from rig.iso8583 import cup, encode_field62, frame, generate_working_keys, get_dialect, read_frame

CUP = get_dialect("cup")


def hostport(text: str) -> tuple[str, int]:
    host, port = text.rsplit(":", 1)
    return host, int(port)


class FakeHost:
    """A plain-socket CUP host: ``mode`` ok (answer with ``rc``), badkcv (keys under a wrong TMK), silent."""

    def __init__(self, cfg: LabConfig, mode: str = "ok", rc: str = "00") -> None:
        self.cfg, self.mode, self.rc = cfg, mode, rc
        self.requests: list[dict[str, Any]] = []
        self.keys: dict[str, Any] = {}
        self._tmk = {t.terminal_id: bytes.fromhex(t.tmk) for t in cfg.terminals.values()}
        self._sock = socket.create_server(hostport(cfg.host.listen))
        self._sock.settimeout(0.1)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._accept, daemon=True)
        self._thread.start()

    def _accept(self) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = self._sock.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    def _serve(self, conn: socket.socket) -> None:
        with conn:
            conn.settimeout(5)

            def read_exactly(n: int) -> bytes:
                buf = b""
                while len(buf) < n:
                    chunk = conn.recv(n - len(buf))
                    if not chunk:
                        break
                    buf += chunk
                return buf

            try:
                while True:
                    req = CUP.decode(read_frame(read_exactly))
                    self.requests.append(req)
                    if self.mode == "silent":
                        continue
                    conn.sendall(frame(CUP.encode(self.reply(req))))
            except Exception:
                return

    def reply(self, req: dict[str, Any]) -> dict[str, Any]:
        mode = cup.key_mode_of(req)
        keys = generate_working_keys(mode)
        tmk = self._tmk[req["41"]]
        if self.mode == "badkcv":
            tmk = bytes(16)
        self.keys[req["41"]] = keys
        f62 = encode_field62(tmk, keys, mode)
        return cup.signon_response(req, rc=self.rc, field62=f62, rrn="000000000001",
                                   when=datetime.now())

    def close(self) -> None:
        self._stop.set()
        self._sock.close()
        self._thread.join(2)


OPEN: list[Lines] = []  # every Lines client made, so a fixture can close them


class Lines:
    """A raw TCP client collecting ``\\r\\n`` lines in a thread."""

    def __init__(self, address: str) -> None:
        self.sock = socket.create_connection(hostport(address), timeout=5)
        self.q: queue.Queue[str] = queue.Queue()
        self.seen: list[str] = []
        OPEN.append(self)
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        buf = b""
        try:
            while chunk := self.sock.recv(4096):
                buf += chunk
                while b"\r\n" in buf:
                    line, buf = buf.split(b"\r\n", 1)
                    self.q.put(line.decode())
        except OSError:
            pass

    def next(self, timeout: float = 5.0) -> str:
        line = self.q.get(timeout=timeout)
        self.seen.append(line)
        return line

    def until(self, text: str, timeout: float = 5.0) -> list[str]:
        """Lines up to and including the first whose event part contains ``text``."""
        out, end = [], time.monotonic() + timeout
        while True:
            line = self.next(max(0.01, end - time.monotonic()))
            out.append(line)
            if text in line:
                return out

    def quiet(self, seconds: float) -> list[str]:
        time.sleep(seconds)
        out = []
        while not self.q.empty():
            out.append(self.q.get())
        return out

    def ask(self, command: str) -> str:
        self.sock.sendall(command.encode() + b"\r\n")
        return self.next()

    def close(self) -> None:
        self.sock.close()


class Scpi:
    def __init__(self, address: str) -> None:
        self.sock = socket.create_connection(hostport(address), timeout=5)
        self.f = self.sock.makefile("rwb")

    def write(self, cmd: str) -> None:
        self.f.write(cmd.encode() + b"\n")
        self.f.flush()

    def query(self, cmd: str) -> str:
        self.write(cmd)
        return self.f.readline().decode().strip()

    def output(self, channel: int, on: bool, volts: float = 12.0) -> None:
        self.write(f"INST:NSEL {channel}")
        self.write(f"VOLT {volts}")
        self.write(f"OUTP {'ON' if on else 'OFF'}")
        assert self.query("*OPC?") == "1"

    def close(self) -> None:
        self.f.close()
        self.sock.close()
