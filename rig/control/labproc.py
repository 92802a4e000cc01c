"""Start the virtual lab (``python -m rig.sim``) as a child process when nothing listens yet.

The controller never imports :mod:`rig.sim`; it runs it, so the lab's Python work never
competes with the controller's measuring threads for one GIL. The child exits when we do.
"""

from __future__ import annotations

import logging
import os
import selectors
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

from ..core.errors import InfrastructureError

log = logging.getLogger(__name__)


PR_SET_PDEATHSIG = 1


def _die_with(parent: int) -> None:
    """In the child, before exec: SIGTERM when ``parent`` dies; exit if it already has."""
    import ctypes

    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)
    if os.getppid() != parent:
        os._exit(1)


def listening(hostport: str, timeout_s: float = 0.3) -> bool:
    host, port = hostport.rsplit(":", 1)
    try:
        with socket.create_connection((host, int(port)), timeout=timeout_s):
            return True
    except OSError:
        return False


class LabProcess:
    """A ``rig lab up`` child process; ``start()`` returns when it printed its ready line."""

    def __init__(self, config_path: str | Path, journal: str | Path | None = None,
                 log_path: str | Path | None = None) -> None:
        self.config_path = Path(config_path)
        self.journal = Path(journal) if journal else None
        self.log_path = Path(log_path) if log_path else None
        self.proc: subprocess.Popen[str] | None = None
        self.ready_line = ""

    def start(self, timeout_s: float = 30.0) -> None:
        cmd = [sys.executable, "-m", "rig.sim", str(self.config_path), "--exit-with-parent"]
        if self.journal:
            cmd += ["--journal", str(self.journal)]
        env = dict(os.environ, PYTHONUNBUFFERED="1")
        parent = os.getpid()
        errfile = open(self.log_path, "a") if self.log_path else subprocess.DEVNULL  # noqa: SIM115
        try:
            # Own session: a Ctrl-C at the terminal reaches the rig, which stops the lab in
            # order; PDEATHSIG is set before exec, so the lab dies with us even if we are
            # killed while it is still starting.
            self.proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=errfile,
                                         stdin=subprocess.DEVNULL, text=True, env=env,
                                         start_new_session=True,
                                         preexec_fn=lambda: _die_with(parent))
        finally:
            if self.log_path:
                errfile.close()
        sel = selectors.DefaultSelector()
        assert self.proc.stdout is not None
        sel.register(self.proc.stdout, selectors.EVENT_READ)
        end = time.monotonic() + timeout_s
        while time.monotonic() < end:
            if sel.select(timeout=0.2):
                line = self.proc.stdout.readline()
                if "ready" in line:
                    self.ready_line = line.strip()
                    log.info("virtual lab: %s", self.ready_line)
                    # keep draining stdout so the child never blocks on a full pipe
                    threading.Thread(target=self._drain, daemon=True).start()
                    return
                if line == "" and self.proc.poll() is not None:
                    break
            elif self.proc.poll() is not None:
                break
        err = self._stderr_tail()
        self.stop()
        raise InfrastructureError(
            f"virtual lab ({' '.join(cmd[1:])}) did not become ready within {timeout_s:.0f} s"
            + (f":\n{err}" if err else "; are its ports free?")
        )

    def _drain(self) -> None:
        p = self.proc
        if p is not None and p.stdout is not None:
            for _ in p.stdout:
                pass

    def _stderr_tail(self) -> str:
        if self.log_path is None or not self.log_path.exists():
            return ""
        return "\n".join(self.log_path.read_text(errors="replace").strip().splitlines()[-15:])

    def stop(self) -> None:
        p, self.proc = self.proc, None
        if p is None or p.poll() is not None:
            return
        p.terminate()
        try:
            p.wait(timeout=5)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait(timeout=5)
