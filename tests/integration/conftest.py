"""Integration fixtures: a virtual lab on free loopback ports, started the way users start it."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from rig.config import LabConfig
from rig.host.server import AcquirerHost
from rig.timeline.events import ListSink
from tests.labcfg import virtual_config, write_config

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def lab_file(tmp_path: Path) -> Path:
    """A copy of configs/labs/virtual.yaml on free ports, time_scale 0.1."""
    return write_config(virtual_config(tmp_path, time_scale=0.1), tmp_path / "lab.yaml")


class LabProc:
    """``rig lab up`` as a process the test owns (so the test can kill it)."""

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


@pytest.fixture
def lab_proc(lab_file: Path, tmp_path: Path):
    lab = LabProc(lab_file, tmp_path / "truth.jsonl")
    yield lab
    lab.stop()


@pytest.fixture
def sink() -> ListSink:
    return ListSink()


@pytest.fixture
def host(cfg: LabConfig, sink: ListSink) -> Iterator[AcquirerHost]:
    """An acquirer host for the module's ``cfg`` on a free loopback port."""
    with AcquirerHost(cfg, sink, listen="127.0.0.1:0") as h:
        yield h
