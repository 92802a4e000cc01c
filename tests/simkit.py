"""Test kit for the virtual lab: a tiny fake CUP host, raw SCPI / line / G-code clients."""

from __future__ import annotations

import os
import queue
import socket
import subprocess
import sys
import threading
import time
from datetime import datetime
from pathlib import Path
from typing import Any

from rig.config import LabConfig, Point
from rig.iso8583 import (
    cup,
    cup_txn,
    encode_field62,
    frame,
    generate_working_keys,
    get_dialect,
    read_frame,
)

CUP = get_dialect("cup")

ROOT = Path(__file__).resolve().parents[1]


def hostport(text: str) -> tuple[str, int]:
    host, port = text.rsplit(":", 1)
    return host, int(port)


class FakeHost:
    """A plain-socket CUP host: ``mode`` ok (answer with ``rc``), badkcv (keys under a wrong TMK), silent.

    Financial requests (0100/0200/0400/0500) are answered with a valid MAC under the
    terminal's session MAK, after ``delay_s``; ``script`` holds what to do with the next ones
    (popped in order, then ``ok``): ``ok``, ``silent`` (no answer), ``badmac`` or an rc such as
    ``51`` / ``A0`` (A0 without a MAC). ``txns`` keeps (request, its MAC was valid) pairs.
    """

    def __init__(self, cfg: LabConfig, mode: str = "ok", rc: str = "00", delay_s: float = 0.003) -> None:
        self.cfg, self.mode, self.rc, self.delay_s = cfg, mode, rc, delay_s
        self.requests: list[dict[str, Any]] = []
        self.txns: list[tuple[dict[str, Any], bool]] = []
        self.script: list[str] = []
        self.keys: dict[str, Any] = {}
        self._n = 0
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
                    body = read_frame(read_exactly)
                    req = CUP.decode(body)
                    self.requests.append(req)
                    if req["t"] in cup_txn.FINANCIAL_MTIS:
                        reply = self._financial(req, body)
                    else:
                        reply = None if self.mode == "silent" else CUP.encode(self.reply(req))
                    if reply is not None:
                        time.sleep(self.delay_s)
                        conn.sendall(frame(reply))
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

    def _financial(self, req: dict[str, Any], body: bytes) -> bytes | None:
        keys = self.keys[req["41"]]
        self.txns.append((req, CUP.verify_mac(body, keys.mak8)))
        what = self.script.pop(0) if self.script else "ok"
        if what == "silent":
            return None
        self._n += 1
        rc = "00" if what in ("ok", "badmac") else what
        when, rrn = datetime.now(), f"{self._n:012d}"
        if req["t"] == "0500":
            rsp = cup_txn.settlement_response(req, balanced=True, rrn=rrn, when=when)
        else:
            balance = 12345 if cup_txn.txn_kind(req) == "balance" else None
            rsp = cup_txn.txn_response(req, rc=rc, rrn=rrn, when=when, auth_code=f"{self._n:06d}",
                                       balance_minor=balance)
        if rc == "A0":
            return CUP.encode(rsp)
        out = CUP.encode(rsp, mak=keys.mak8)
        return out[:-1] + bytes([out[-1] ^ 1]) if what == "badmac" else out

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


class Grbl:
    """A raw G-code client of the GRBL sim: one line, one ``ok`` / ``error:N``."""

    def __init__(self, address: str) -> None:
        self.sock = socket.create_connection(hostport(address), timeout=10)
        self.f = self.sock.makefile("rb")
        assert self._line().startswith("Grbl 1.1")

    def _line(self) -> str:
        while True:
            line = self.f.readline().decode().strip()
            if line:
                return line

    def send(self, line: str) -> str:
        self.sock.sendall(line.encode() + b"\n")
        while True:
            reply = self._line()
            if reply == "ok" or reply.startswith(("error:", "ALARM:")):
                return reply

    def run(self, *lines: str) -> None:
        for line in lines:
            assert self.send(line) == "ok", line

    def close(self) -> None:
        self.f.close()
        self.sock.close()


class CardMoves:
    """The card moves of ``rig.drivers.robot`` in raw G-code, on the lab's layout; every move
    returns once the motion is complete (``G4 P0``)."""

    def __init__(self, grbl: Grbl, cfg: LabConfig, feed_mm_min: float = 30000) -> None:
        assert cfg.robot is not None
        self.g, self.cfg, self.layout, self.feed = grbl, cfg, cfg.robot, feed_mm_min

    def _travel(self, p: Point) -> None:
        z = self.layout.safe_z
        self.g.run(f"G0 Z{z}", f"G0 X{p.x} Y{p.y}", f"G1 Z{p.z} F{self.feed}")

    def _up(self) -> None:
        self.g.run(f"G0 Z{self.layout.safe_z}", "G4 P0")

    def pick(self, slot: int) -> None:
        self._travel(self.layout.slot_point(slot))
        self.g.run("M8")
        self._up()

    def give_back(self, slot: int) -> None:
        self._travel(self.layout.slot_point(slot))
        self.g.run("M9")
        self._up()

    def insert(self, terminal: str) -> None:
        self._travel(self._st(terminal).chip)
        self.g.run("G4 P0")

    def withdraw(self) -> None:
        self._up()

    def swipe(self, terminal: str, speed_mm_s: float) -> None:
        st = self._st(terminal)
        self._travel(st.swipe_start)
        e = st.swipe_end
        self.g.run(f"G1 X{e.x} Y{e.y} Z{e.z} F{speed_mm_s * 60}")
        self._up()

    def tap(self, terminal: str, dwell_ms: float) -> None:
        self._travel(self._st(terminal).nfc)
        self.g.run(f"G4 P{dwell_ms / 1000:.3f}")
        self._up()

    def _st(self, terminal: str) -> Any:
        st = self.cfg.terminals[terminal].stations
        assert st is not None
        return st


class LabProc:
    """``python -m rig.sim`` (what ``rig lab up`` runs) as a process the test owns, so the test
    can kill it; it outlives any rig service, as a real bench does."""

    def __init__(self, cfg: Path, journal: Path) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "rig.sim", str(cfg), "--journal", str(journal)],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL, text=True,
            cwd=ROOT, env=dict(os.environ, PYTHONUNBUFFERED="1"))
        end = time.monotonic() + 30
        assert self.proc.stdout is not None
        while time.monotonic() < end:
            line = self.proc.stdout.readline()
            if "ready" in line:
                return
            if not line and self.proc.poll() is not None:
                break
        raise RuntimeError(f"lab did not start: {self.proc.stderr.read() if self.proc.stderr else ''}")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
