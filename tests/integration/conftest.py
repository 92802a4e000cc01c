"""Integration fixtures: a virtual lab on free loopback ports, started the way users start it."""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from rig.config import LabConfig
from rig.host.server import AcquirerHost
from rig.timeline.events import ListSink
from tests.labcfg import virtual_config, write_config
from tests.simkit import LabProc

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def lab_file(tmp_path: Path) -> Path:
    """A copy of configs/labs/virtual.yaml on free ports, time_scale 0.1."""
    return write_config(virtual_config(tmp_path, time_scale=0.1), tmp_path / "lab.yaml")


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


@pytest.fixture(autouse=True)
def _short_lived_services(monkeypatch: pytest.MonkeyPatch) -> None:
    """A service a test starts (through open_rig or the CLI) exits soon after its last client."""
    monkeypatch.setenv("RIG_SERVICE_IDLE_S", "8")


@pytest.fixture
def service_stop() -> Iterator[list[tuple[Path, str]]]:
    """Register (results dir, lab name); the services found there are stopped at the end."""
    started: list[tuple[Path, str]] = []
    yield started
    import signal as _signal

    from rig.service.runtime import Paths, read_info
    from rig.timeline.store import pid_alive

    for results, lab in started:
        info = read_info(Paths(Path(results).resolve(), lab))
        if info is None:
            continue
        os.kill(int(info["pid"]), _signal.SIGTERM)
        end = time.monotonic() + 30
        while time.monotonic() < end and pid_alive(int(info["pid"])):
            time.sleep(0.1)


@pytest.fixture
def lab(tmp_path: Path, service_stop: list) -> tuple[Path, Path]:
    """(lab config on free ports at time_scale 0.1, results dir) for a test that starts a rig
    service there (stopped at the end)."""
    path = write_config(virtual_config(tmp_path, time_scale=0.1), tmp_path / "lab.yaml")
    results = tmp_path / "results"
    service_stop.append((results, "virtual"))
    return path, results
