"""Every notebook runs top to bottom against the virtual lab."""

from __future__ import annotations

from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = sorted((ROOT / "notebooks").glob("*.ipynb"))


@pytest.mark.notebook
@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_notebook_runs(path: Path, tmp_path: Path, monkeypatch):
    monkeypatch.setenv("RIG_RESULTS", str(tmp_path / "results"))
    monkeypatch.setenv("MPLBACKEND", "Agg")
    monkeypatch.setenv("RIG_SERVICE_IDLE_S", "5")
    nb = nbformat.read(path, as_version=4)
    try:
        NotebookClient(nb, timeout=300, kernel_name="python3",
                       resources={"metadata": {"path": str(ROOT)}}).execute()
    finally:
        _stop_service(tmp_path / "results")
    assert (tmp_path / "results" / "virtual.db").exists()


def _stop_service(results: Path) -> None:
    """The notebook's rig service (it holds the virtual lab's fixed ports) goes with the test."""
    import os
    import signal
    import time

    from rig.service.runtime import Paths, read_info
    from rig.timeline.store import pid_alive

    info = read_info(Paths(results.resolve(), "virtual"))
    if info is None:
        return
    os.kill(int(info["pid"]), signal.SIGTERM)
    end = time.monotonic() + 30
    while time.monotonic() < end and pid_alive(int(info["pid"])):
        time.sleep(0.1)
