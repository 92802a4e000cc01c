"""Running the service: one per lab and results directory on a host.

``serve()`` takes an exclusive lock (``<results>/<lab>-service.lock``), opens the hub, binds
its port (loopback unless told otherwise; any other address requires a token, created
``0600`` as ``<lab>-service.token``), writes ``<lab>-service.json`` (pid, URL) for clients, and
serves until stopped, idle, or signalled — then leaves the bench's safe state. A second
``serve`` of the same lab is refused while the first holds the lock; the lock goes with its
process, whatever kills it.
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
import secrets
import signal
import socket
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..core.errors import InfrastructureError, ServiceError

log = logging.getLogger(__name__)

LOOPBACK = ("127.0.0.1", "::1", "localhost")
DEFAULT_IDLE_S = 300.0  # a detached service exits after this long with no client


@dataclass(frozen=True)
class Paths:
    results: Path
    lab: str

    def _p(self, suffix: str) -> Path:
        return self.results / f"{self.lab}-service{suffix}"

    @property
    def info(self) -> Path:
        return self._p(".json")

    @property
    def lock(self) -> Path:
        return self._p(".lock")

    @property
    def token(self) -> Path:
        return self._p(".token")

    @property
    def log(self) -> Path:
        return self._p(".log")


def read_info(paths: Paths) -> dict[str, Any] | None:
    """The running service's pid / URL, or None when none is recorded or it is gone."""
    from ..timeline.store import pid_alive

    try:
        info = json.loads(paths.info.read_text())
    except (OSError, ValueError):
        return None
    if not pid_alive(int(info.get("pid", 0)), info.get("proc_start")):
        return None
    if paths.token.exists():
        info["token"] = paths.token.read_text().strip()
    return info


def _write_atomic(path: Path, text: str, mode: int = 0o644) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    with os.fdopen(fd, "w") as f:
        f.write(text)
    os.replace(tmp, path)


def spawn(config: Path, results: Path, *, idle_s: float = DEFAULT_IDLE_S,
          start_lab: bool | None = None, delete_config: bool = False) -> subprocess.Popen[bytes]:
    """Start a detached service (its own session: a notebook's Ctrl-C does not reach it)."""
    results.mkdir(parents=True, exist_ok=True)
    cmd = [sys.executable, "-m", "rig", "--results", str(results), "serve", str(config),
           "--idle-exit", str(idle_s)]
    if start_lab is False:
        cmd.append("--no-lab")
    if delete_config:
        cmd.append("--delete-config")
    logf = open(results / "service-spawn.log", "ab")  # noqa: SIM115
    try:
        return subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=logf, stderr=logf,
                                start_new_session=True, env=dict(os.environ, PYTHONUNBUFFERED="1"))
    finally:
        logf.close()


def wait_ready(paths: Paths, proc: subprocess.Popen[bytes] | None,
               timeout_s: float = 90.0) -> dict[str, Any]:
    """Wait for the service's info file and its first answer."""
    import httpx

    end = time.monotonic() + timeout_s
    while time.monotonic() < end:
        info = read_info(paths)
        if info:
            try:
                headers = {"authorization": f"Bearer {info['token']}"} if "token" in info else {}
                r = httpx.get(f"{info['url']}/v1/status", timeout=5.0, headers=headers)
                if r.status_code == 200:
                    return info
            except httpx.HTTPError:
                pass
        if proc is not None and proc.poll() is not None and not read_info(paths):
            break
        time.sleep(0.1)
    tail = ""
    for f in (paths.log, paths.results / "service-spawn.log"):
        if f.exists():
            tail += "\n".join(f.read_text(errors="replace").strip().splitlines()[-15:])
    raise ServiceError(f"the rig service for lab {paths.lab} did not come up within "
                       f"{timeout_s:.0f} s" + (f":\n{tail}" if tail else ""))


def serve(config: str | Path, *, results: str | Path | None = None, host: str = "127.0.0.1",
          port: int = 0, idle_s: float = 0.0, start_lab: bool | None = None,
          delete_config: bool = False, heartbeat_s: float = 10.0,
          ready: threading.Event | None = None) -> int:
    """Run the service in the foreground until stopped; returns an exit code."""
    import uvicorn

    from ..config import load_lab
    from ..control.bench import results_dir
    from ..timeline.store import proc_start
    from .app import make_app
    from .hub import Hub

    cfg = load_lab(config)
    res = results_dir(results)
    res.mkdir(parents=True, exist_ok=True)
    paths = Paths(res, cfg.name)
    lockf = open(paths.lock, "a+")  # noqa: SIM115 - held for the process's life
    try:
        fcntl.flock(lockf, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        info = read_info(paths) or {}
        raise InfrastructureError(
            f"a rig service for lab {cfg.name} already runs (pid {info.get('pid', '?')}, "
            f"{info.get('url', '?')}); `rig serve stop` stops it") from None
    token = None
    if host not in LOOPBACK:
        token = secrets.token_urlsafe(24)
        _write_atomic(paths.token, token, 0o600)
    else:
        paths.token.unlink(missing_ok=True)
    handler = logging.FileHandler(paths.log)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    logging.getLogger().addHandler(handler)
    from ..core.logredact import install as install_redaction

    install_redaction()  # every handler, this one included: no card data or key in the log
    if logging.getLogger().level > logging.INFO or logging.getLogger().level == 0:
        logging.getLogger().setLevel(logging.INFO)
    logging.getLogger("uvicorn.access").setLevel(logging.WARNING)

    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as e:
        raise InfrastructureError(f"rig service: cannot bind {host}:{port}: {e}") from e
    sock.listen(128)
    bound = sock.getsockname()
    url = f"http://{'[' + bound[0] + ']' if family == socket.AF_INET6 else bound[0]}:{bound[1]}"

    try:
        hub = Hub(config, results=res, start_lab=start_lab, idle_s=idle_s,
                  heartbeat_s=heartbeat_s, url=url)
    finally:  # the client's temp config holds keys and passwords: gone even if Hub() fails
        if delete_config:
            Path(config).unlink(missing_ok=True)
    server = uvicorn.Server(uvicorn.Config(make_app(hub, token), log_level="warning",
                                           access_log=False, lifespan="off"))

    def watch() -> None:
        hub.stopping.wait()
        server.should_exit = True

    threading.Thread(target=watch, name="service-stop", daemon=True).start()
    _write_atomic(paths.info, json.dumps({
        "pid": os.getpid(), "proc_start": proc_start(os.getpid()), "url": url,
        "lab": cfg.name, "config": str(Path(config).resolve()), "started": time.time()}))
    log.info("rig service for lab %s on %s (pid %d)", cfg.name, url, os.getpid())
    if ready is not None:
        ready.set()

    def terminate(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt

    # uvicorn handles SIGINT / SIGTERM while it runs and re-raises the signal once it stopped,
    # with the handler it found: make that one unwind through `finally` (safe state, runs
    # marked), not the default one that would end the process on the spot.
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, terminate)
    try:
        server.run(sockets=[sock])
    except KeyboardInterrupt:
        log.info("rig service for lab %s: stopping on a signal", cfg.name)
    finally:
        hub.stopping.set()
        try:
            hub.close()
        finally:
            info = read_info(paths)
            if info is None or info.get("pid") == os.getpid():
                paths.info.unlink(missing_ok=True)
            logging.getLogger().removeHandler(handler)
            lockf.close()
    return 0
