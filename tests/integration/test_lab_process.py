"""``python -m rig.sim`` as a child process: ready line, clean SIGTERM, exit with its parent."""

from __future__ import annotations

import os
import selectors
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from rig.sim.journal import read_journal
from tests.labcfg import virtual_config, write_config

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]


def _lab_cmd(config: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "rig.sim", str(config), *extra]


def _readline(proc: subprocess.Popen[str], timeout: float) -> str:
    assert proc.stdout is not None
    sel = selectors.DefaultSelector()
    sel.register(proc.stdout, selectors.EVENT_READ)
    if not sel.select(timeout):
        return ""
    return proc.stdout.readline()


def _refused(hostport: str) -> bool:
    host, port = hostport.rsplit(":", 1)
    try:
        socket.create_connection((host, int(port)), timeout=1).close()
    except ConnectionRefusedError:
        return True
    return False


def _gone(pid: int, timeout: float) -> bool:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return True
        time.sleep(0.05)
    return False


def test_ready_line_sigterm_and_ports_released(tmp_path: Path) -> None:
    cfg = virtual_config(tmp_path)
    path = write_config(cfg, tmp_path / "lab.yaml")
    proc = subprocess.Popen(_lab_cmd(path, "--exit-with-parent"), cwd=ROOT, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    with proc:
        try:
            line = _readline(proc, 20)
            assert "ready" in line, proc.stderr.read() if proc.poll() is not None else line  # type: ignore[union-attr]
            fields = dict(w.split("=", 1) for w in line.split() if "=" in w)
            assert fields["psu"] == cfg.sim.psu_listen
            assert fields["T1.console"] == cfg.terminals["T1"].console.removeprefix("socket://")  # type: ignore[union-attr]
            assert fields["journal"] == cfg.sim.truth_journal
            with (socket.create_connection(cfg.sim.psu_listen.rsplit(":", 1), timeout=5) as s,  # type: ignore[arg-type]
                  s.makefile("rb") as f):
                s.sendall(b"*IDN?\n")
                assert f.readline().startswith(b"posrig,VPSU")
            t0 = time.monotonic()
            proc.send_signal(signal.SIGTERM)
            assert proc.wait(10) == 0
            assert time.monotonic() - t0 < 3
        finally:
            if proc.poll() is None:
                proc.kill()
    addresses = [cfg.sim.psu_listen] + [
        url.removeprefix("socket://") for t in cfg.terminals.values()
        for url in (t.console, t.ecr) if url]
    assert all(_refused(a) for a in addresses)
    entries = read_journal(cfg.sim.truth_journal)  # type: ignore[arg-type]
    assert [e["what"] for e in entries] == ["lab_start", "lab_stop"]
    assert entries[0]["terminal"] is None and entries[0]["addresses"]["psu"] == cfg.sim.psu_listen
    for a in addresses:  # and can be bound again at once
        host, port = a.rsplit(":", 1)
        socket.create_server((host, int(port))).close()


def test_exits_when_its_parent_dies(tmp_path: Path) -> None:
    path = write_config(virtual_config(tmp_path), tmp_path / "lab.yaml")
    code = ("import subprocess, sys, time\n"
            f"p = subprocess.Popen({_lab_cmd(path, '--exit-with-parent')!r}, stdout=subprocess.PIPE, text=True)\n"
            "line = p.stdout.readline()\n"
            "print(p.pid, line.strip(), flush=True)\n"
            "time.sleep(60)\n")
    with subprocess.Popen([sys.executable, "-c", code], cwd=ROOT, text=True,
                          stdout=subprocess.PIPE) as parent:
        line = _readline(parent, 20)
        parent.kill()
        assert "ready" in line
        child = int(line.split()[0])
    assert _gone(child, 5), "the lab outlived its parent"


def test_config_error_exits_2(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: x\nvirtual: true\nmodels: {}\nterminals: {}\nsim: {time_scale: -1}\n")
    proc = subprocess.run(_lab_cmd(bad), cwd=ROOT, capture_output=True, text=True, timeout=30)
    assert proc.returncode == 2
    assert f"{bad}:5: sim.time_scale" in proc.stderr
    assert proc.stdout == ""


def test_port_in_use_exits_1(tmp_path: Path) -> None:
    cfg = virtual_config(tmp_path)
    path = write_config(cfg, tmp_path / "lab.yaml")
    host, port = cfg.sim.psu_listen.rsplit(":", 1)
    with socket.create_server((host, int(port))):
        proc = subprocess.run(_lab_cmd(path), cwd=ROOT, capture_output=True, text=True, timeout=30)
    assert proc.returncode == 1
    assert "cannot start" in proc.stderr and "ready" not in proc.stdout


def test_a_burst_of_signals_still_stops_it(tmp_path: Path) -> None:
    """The parent's death signal and the watchdog's SIGTERM arrive together: no deadlock."""
    path = write_config(virtual_config(tmp_path), tmp_path / "lab.yaml")
    proc = subprocess.Popen(_lab_cmd(path), cwd=ROOT, text=True, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE)
    with proc:
        try:
            assert "ready" in _readline(proc, 20)
            for _ in range(20):
                proc.send_signal(signal.SIGTERM)
            assert proc.wait(10) == 0
        finally:
            if proc.poll() is None:
                proc.kill()
