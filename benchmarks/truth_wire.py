"""The truth itself against the wire: the virtual lab's journal vs a kernel-stamped capture on lo.

The benchmarks and tests judge the rig's timestamps by the virtual lab's truth journal; this
checks the journal. It captures loopback traffic with an AF_PACKET raw socket on ``lo``
(``SO_TIMESTAMPNS``: each frame carries the kernel's capture stamp; a BPF filter keeps only TCP
to and from the lab's host and console ports), runs the virtual lab (``python -m rig.sim`` in
its own process) through sign-ons of its 4 terminals against a small CUP host (powered over
raw SCPI, READY awaited on each console), then matches frames to journal entries:

- ``0800 send``: ``signon_req_sent`` vs the 0800's last segment leaving the terminal's socket
  (the capture's outgoing copy, taken by ``dev_queue_xmit`` just before the loopback device);
- ``0810 receive``: ``signon_rsp_received`` vs the 0810's last segment arriving (the incoming
  copy, stamped when ``lo`` delivered it);
- ``console line``: each ``console`` entry (boot, login, READY…) vs its line leaving the
  console port (outgoing copy);
- ``OUTP ON``: the ``power_on`` entry's ``cmd_rx_*`` stamp vs the SCPI line that switched the
  output arriving at the virtual PSU (incoming copy). The output itself switches ``lag_us``
  later, when the lab executes the line (that is the ``power_on`` truth boot counts from).

Prints p50 / p99 / max of (truth − wire) in µs per kind, on the journal's monotonic timeline
(capture stamps mapped with the same wall↔mono offset method the lab uses) and, for kernel
stamps, on the raw CLOCK_REALTIME stamps too. Needs root (CAP_NET_RAW); without it, says why
and exits 0.

    .venv/bin/python benchmarks/truth_wire.py [--cycles 25] [--busy 2]

``--busy N`` runs N CPU-burning processes meanwhile (the lab's loop then wakes late; the
kernel's stamps do not).
"""

from __future__ import annotations

import argparse
import ctypes
import os
import socket
import struct
import subprocess
import sys
import tempfile
import threading
import time
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from rig.config import LabConfig  # noqa: E402
from rig.core.clock import WallToMono  # noqa: E402
from rig.core.netstamp import ANC_SPACE, SO_TIMESTAMPNS, kernel_wall_ns  # noqa: E402
from rig.iso8583 import get_dialect  # noqa: E402
from rig.sim import read_journal  # noqa: E402
from tests.labcfg import virtual_config, write_config  # noqa: E402
from tests.simkit import FakeHost, Lines, Scpi  # noqa: E402

ETH_P_ALL = 0x0003
PACKET_HOST, PACKET_OUTGOING = 0, 4
SOL_PACKET, PACKET_STATISTICS = 263, 6
SO_ATTACH_FILTER = 26
CUP = get_dialect("cup")


# --- capture ------------------------------------------------------------------------------------
def _bpf_tcp_ports(ports: list[int]) -> list[tuple[int, int, int, int]]:
    """Classic BPF: IPv4 TCP (unfragmented) with source or destination port in ``ports``."""
    n = len(ports)
    drop, accept = 9 + 2 * n, 10 + 2 * n
    prog = [(0x28, 0, 0, 12),  # ldh [12] ethertype
            (0x15, 0, drop - 2, 0x0800),
            (0x30, 0, 0, 23),  # ldb [23] IP protocol
            (0x15, 0, drop - 4, 6),
            (0x28, 0, 0, 20),  # ldh [20] flags / fragment offset
            (0x45, drop - 6, 0, 0x1FFF),
            (0xB1, 0, 0, 14),  # ldxb 4*([14]&0xf): IP header length
            (0x48, 0, 0, 14)]  # ldh [x+14]: TCP source port
    for i, p in enumerate(ports):
        pc = 8 + i
        prog.append((0x15, accept - pc - 1, 0, p))
    prog.append((0x48, 0, 0, 16))  # ldh [x+16]: TCP destination port
    for i, p in enumerate(ports):
        pc = 9 + n + i
        prog.append((0x15, accept - pc - 1, 0, p))
    prog += [(0x06, 0, 0, 0), (0x06, 0, 0, 0x40000)]
    assert len(prog) == accept + 1
    return prog


class Capture:
    """AF_PACKET on ``lo``: (kernel wall ns, packet type, frame) for every matching frame."""

    def __init__(self, ports: list[int]) -> None:
        self.sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(ETH_P_ALL))
        try:
            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 16 << 20)
            prog = _bpf_tcp_ports(ports)
            buf = ctypes.create_string_buffer(b"".join(struct.pack("HBBI", *ins) for ins in prog))
            fprog = struct.pack("@HP", len(prog), ctypes.addressof(buf))
            self.sock.setsockopt(socket.SOL_SOCKET, SO_ATTACH_FILTER, fprog)
            self.sock.setsockopt(socket.SOL_SOCKET, SO_TIMESTAMPNS, 1)
            self.sock.bind(("lo", 0))
            self.sock.settimeout(0.1)
        except BaseException:
            self.sock.close()
            raise
        while True:  # frames queued before the filter was attached
            try:
                self.sock.recv(65535, socket.MSG_DONTWAIT)
            except (BlockingIOError, TimeoutError):
                break
        self.frames: list[tuple[int, int, bytes]] = []
        self.unstamped = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="capture", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                data, anc, _, addr = self.sock.recvmsg(65535, ANC_SPACE)
            except TimeoutError:
                continue
            except OSError:
                return
            wall = kernel_wall_ns(anc)
            if wall is None:
                self.unstamped += 1
                continue
            self.frames.append((wall, addr[2], data))

    def stop(self) -> tuple[int, int]:
        """Stop; (packets, drops) the kernel counted for the socket."""
        time.sleep(0.1)
        self._stop.set()
        self._thread.join(2)
        raw = self.sock.getsockopt(SOL_PACKET, PACKET_STATISTICS, 8)
        self.sock.close()
        packets, drops = struct.unpack("II", raw)
        return packets, drops


@dataclass
class Segment:
    wall_ns: int
    offset: int  # stream offset of the first payload byte
    payload: bytes


def tcp_segments(frames: list[tuple[int, int, bytes]]) -> list[tuple[tuple[int, int, int], list[Segment]]]:
    """Payload segments per connection and direction: ((packet type, source port, destination
    port), segments in stream order, offsets relative to the first captured byte). A port pair
    seen again (an ephemeral port reused) starts a new flow where the sequence jumps;
    retransmissions are dropped."""
    flows: dict[tuple[int, int, int], list[tuple[int, int, list[Segment]]]] = defaultdict(list)
    for wall, ptype, f in frames:  # capture order
        if len(f) < 34 or f[12:14] != b"\x08\x00":
            continue
        ihl = (f[14] & 0x0F) * 4
        total = struct.unpack_from("!H", f, 16)[0]
        t = 14 + ihl
        sport, dport, seq = struct.unpack_from("!HHI", f, t)
        thl = (f[t + 12] >> 4) * 4
        payload = f[t + thl:14 + total]
        if not payload:
            continue
        subs = flows[(ptype, sport, dport)]
        for i, (base, nxt, segs) in enumerate(subs):
            off = (seq - base) & 0xFFFFFFFF
            if off < (nxt - base) & 0xFFFFFFFF:
                break  # a retransmission
            if seq == nxt:
                segs.append(Segment(wall, off, payload))
                subs[i] = (base, (seq + len(payload)) & 0xFFFFFFFF, segs)
                break
        else:
            subs.append((seq, (seq + len(payload)) & 0xFFFFFFFF, [Segment(wall, 0, payload)]))
    return [(key, segs) for key, subs in flows.items() for _, _, segs in subs]


def _stamp_at(segs: list[Segment], offset: int) -> int:
    """The capture stamp of the segment holding stream byte ``offset``."""
    for s in segs:
        if s.offset <= offset < s.offset + len(s.payload):
            return s.wall_ns
    raise KeyError(offset)


def _stream(segs: list[Segment]) -> bytes:
    out = bytearray()
    for s in segs:
        if s.offset > len(out):  # a hole: not captured; stop there
            break
        out += s.payload[len(out) - s.offset:]
    return bytes(out)


def iso_frames(segs: list[Segment]) -> list[tuple[dict[str, Any], int]]:
    """(decoded message, stamp of the segment with its last byte) per length-prefixed frame."""
    data, pos, out = _stream(segs), 0, []
    while pos + 2 <= len(data):
        n = int.from_bytes(data[pos:pos + 2], "big")
        end = pos + 2 + n
        if n == 0 or end > len(data):
            pos = end
            continue
        try:
            out.append((CUP.decode(data[pos + 2:end]), _stamp_at(segs, end - 1)))
        except Exception:  # noqa: BLE001 - not ours to judge here
            pass
        pos = end
    return out


def text_lines(segs: list[Segment]) -> list[tuple[str, int]]:
    """(line without its end, stamp of the segment with its ``\\n``) per line."""
    data, pos, out = _stream(segs), 0, []
    while (i := data.find(b"\n", pos)) >= 0:
        out.append((data[pos:i].decode("utf-8", "replace").rstrip("\r"), _stamp_at(segs, i)))
        pos = i + 1
    return out


# --- the lab --------------------------------------------------------------------------------------
def lab_config(tmp: Path) -> tuple[LabConfig, Path]:
    cfg = virtual_config(tmp, time_scale=1.0,
                         boot={"dist": "normal", "mean": 120, "sd": 15, "min": 60},
                         login={"dist": "fixed", "ms": 10}, clock_sync={"dist": "fixed", "ms": 5})
    terms = {n: t.model_copy(update={"auto_login": True}) for n, t in cfg.terminals.items()}
    cfg = cfg.model_copy(update={"terminals": terms})
    return cfg, write_config(cfg, tmp / "lab.json")


def start_lab(cfg_path: Path, journal: Path) -> subprocess.Popen[str]:
    import rig

    env = dict(os.environ, PYTHONPATH=str(Path(rig.__file__).resolve().parents[1]))
    proc = subprocess.Popen([sys.executable, "-m", "rig.sim", str(cfg_path), "--journal", str(journal),
                             "--exit-with-parent"], cwd=ROOT, env=env, stdout=subprocess.PIPE,
                            text=True)
    assert proc.stdout is not None
    line = proc.stdout.readline()
    if not line.startswith("rig.sim ready"):
        proc.kill()
        raise SystemExit(f"the virtual lab did not start: {line!r}")
    return proc


def run_signons(cfg: LabConfig, cycles: int) -> int:
    """Power-cycle every terminal ``cycles`` times; READY seen on each console each time."""
    psu = Scpi(cfg.sim.psu_listen)
    consoles = {n: Lines(t.console.removeprefix("socket://")) for n, t in cfg.terminals.items()
                if t.console}
    ready = 0
    try:
        for _ in range(cycles):
            for t in cfg.terminals.values():
                psu.output(t.power.channel, False)
            time.sleep(0.05)
            for c in consoles.values():
                c.quiet(0)
            for t in cfg.terminals.values():
                psu.output(t.power.channel, True)
            for name, c in consoles.items():
                try:
                    c.until("READY", 10.0)
                    ready += 1
                except Exception as e:  # noqa: BLE001 - count it, carry on
                    print(f"  {name}: no READY ({e!r})", file=sys.stderr)
        for t in cfg.terminals.values():
            psu.output(t.power.channel, False)
    finally:
        psu.close()
        for c in consoles.values():
            c.close()
    return ready


# --- matching -------------------------------------------------------------------------------------
def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cycles", type=int, default=25, help="sign-ons per terminal")
    ap.add_argument("--busy", type=int, default=0, help="CPU-burning processes meanwhile")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        cfg, cfg_path = lab_config(tmp)
        host_port = int(cfg.host.listen.rsplit(":", 1)[1])
        psu_port = int(cfg.sim.psu_listen.rsplit(":", 1)[1])
        channel_of = {t.power.channel: n for n, t in cfg.terminals.items()}
        console_port = {int(t.console.rsplit(":", 1)[1]): n for n, t in cfg.terminals.items() if t.console}
        tid_name = {t.terminal_id: n for n, t in cfg.terminals.items()}
        try:
            cap = Capture([host_port, psu_port, *console_port])
        except PermissionError as e:
            print(f"truth_wire: cannot capture on lo ({e}); needs root / CAP_NET_RAW. Skipped.")
            return 0
        except OSError as e:
            print(f"truth_wire: no AF_PACKET capture on lo here ({e}). Skipped.")
            return 0
        journal = tmp / "truth.jsonl"
        host = FakeHost(cfg)
        lab = start_lab(cfg_path, journal)
        w2m = WallToMono()
        burners = [subprocess.Popen([sys.executable, "-c", "while True: pass"])
                   for _ in range(args.busy)]
        t0 = time.monotonic()
        try:
            ready = run_signons(cfg, args.cycles)
        finally:
            for b in burners:
                b.kill()
                b.wait()
            packets, drops = cap.stop()
            lab.terminate()
            lab.wait(10)
            host.close()
        wall_s = time.monotonic() - t0
        entries = read_journal(journal)

    flows = tcp_segments(cap.frames)
    wire: dict[tuple[str, str, str], int] = {}  # (mti, terminal, stan) -> capture wall ns
    for (ptype, sport, dport), segs in flows:
        to_host, from_host = dport == host_port, sport == host_port
        if (to_host and ptype == PACKET_OUTGOING) or (from_host and ptype == PACKET_HOST):
            for msg, wall in iso_frames(segs):
                name = tid_name.get(str(msg.get("41", "")).strip())
                if name is not None and msg.get("t") in ("0800", "0810"):
                    wire.setdefault((str(msg["t"]), name, str(msg.get("11"))), wall)
    console_wire: dict[str, list[tuple[str, int]]] = defaultdict(list)
    for (ptype, sport, _), segs in flows:
        if ptype == PACKET_OUTGOING and sport in console_port:
            console_wire[console_port[sport]] += text_lines(segs)

    outp_on: dict[str, list[int]] = defaultdict(list)  # terminal -> wire stamps of its OUTP ON
    for (ptype, _, dport), segs in flows:
        if ptype == PACKET_HOST and dport == psu_port:
            channel = 1
            for text, wall in text_lines(segs):
                words = text.upper().split()
                if words[:1] == ["INST:NSEL"]:
                    channel = int(words[1])
                elif words == ["OUTP", "ON"] and channel in channel_of:
                    outp_on[channel_of[channel]].append(wall)

    rows: dict[str, list[tuple[float, float | None, str]]] = defaultdict(list)

    def add(kind: str, e: dict[str, Any], wall: int) -> None:
        mono_err = (e["mono_ns"] - w2m.to_mono(wall)) / 1e3
        clock = str(e.get("clock"))
        raw_err = (e["wall_ns"] - wall) / 1e3 if clock.startswith("kernel") else None
        rows[kind].append((mono_err, raw_err, clock))

    for e in entries:
        if e["what"] == "signon_req_sent" and (w := wire.get(("0800", e["terminal"], e.get("stan")))):
            add("0800 send", e, w)
        elif e["what"] == "signon_rsp_received" and (w := wire.get(("0810", e["terminal"], e.get("stan")))):
            add("0810 receive", e, w)
    for name, lines in console_wire.items():
        truth = [e for e in entries if e["what"] == "console" and e["terminal"] == name]
        i = 0
        for text, wall in lines:
            while i < len(truth) and truth[i]["line"] != text:
                i += 1
            if i < len(truth):
                add("console line", truth[i], wall)
                i += 1

    for name, walls in outp_on.items():
        ons = [e for e in entries if e["what"] == "power_on" and e["terminal"] == name]
        for e, wall in zip(ons, walls, strict=False):  # the command's arrival, kept apart
            add("OUTP ON", {"mono_ns": e["cmd_rx_mono_ns"], "wall_ns": e["cmd_rx_wall_ns"],
                            "clock": e["cmd_clock"]}, wall)

    sent = sum(1 for e in entries if e["what"] == "signon_req_sent")
    print(f"truth vs wire: virtual lab, {len(cfg.terminals)} terminals x {args.cycles} sign-ons "
          f"({ready} READY, {sent} 0800 in the journal), {args.busy} busy processes, "
          f"{wall_s:.1f} s; capture on lo: "
          f"{packets} packets, {drops} dropped")
    print("(truth − wire) µs on the monotonic timeline; 'raw' = kernel stamps compared as "
          "CLOCK_REALTIME, no mapping")
    print(f"{'what':<14} {'n':>5} {'p50':>8} {'p99':>8} {'max':>8} {'min':>8}   {'raw p50':>8} "
          f"{'raw max':>8}  clocks")
    for kind in ("0800 send", "0810 receive", "console line", "OUTP ON"):
        got = rows.get(kind, [])
        if not got:
            print(f"{kind:<14} {0:>5}  (nothing matched)")
            continue
        v = np.array([r[0] for r in got])
        raw = np.array([r[1] for r in got if r[1] is not None])
        clocks: dict[str, int] = defaultdict(int)
        for r in got:
            clocks[r[2]] += 1
        raw_txt = (f"{np.percentile(raw, 50):>8.1f} {raw.max():>8.1f}" if raw.size
                   else f"{'-':>8} {'-':>8}")
        print(f"{kind:<14} {v.size:>5} {np.percentile(v, 50):>8.1f} {np.percentile(v, 99):>8.1f} "
              f"{v.max():>8.1f} {v.min():>8.1f}   {raw_txt}  "
              + ", ".join(f"{k} {n}" for k, n in sorted(clocks.items())))
    if not rows.get("0800 send") or not rows.get("0810 receive"):
        print("truth_wire: no 0800/0810 matched between the journal and the capture", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
