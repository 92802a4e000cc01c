"""``python -m rig.sim CONFIG [--journal PATH] [--exit-with-parent]``: run a virtual lab.

Prints one line containing ``ready`` and every address once all servers listen, then serves
until SIGINT / SIGTERM (exit 0). Exit 2 on a config error, 1 when the lab cannot start.
"""

from __future__ import annotations

import argparse
import ctypes
import logging
import os
import signal
import sys
import threading
import time
from typing import Any

from ..config import load_lab
from ..core.errors import ConfigError, InfrastructureError
from ..core.logredact import install as install_redaction
from .lab import VirtualLab

log = logging.getLogger("rig.sim")

PR_SET_PDEATHSIG = 1


def _exit_with_parent(parent: int) -> None:
    """Get SIGTERM when the parent dies (prctl on Linux) and watch ``getppid()`` as a fallback."""
    if sys.platform.startswith("linux"):
        try:
            libc = ctypes.CDLL(None, use_errno=True)
            if libc.prctl(PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0) != 0:
                log.warning("prctl(PR_SET_PDEATHSIG) failed: errno %d", ctypes.get_errno())
        except (OSError, AttributeError) as e:
            log.warning("prctl unavailable: %s", e)

    def watch() -> None:
        while True:
            if os.getppid() != parent:
                log.warning("parent process %d is gone; stopping", parent)
                os.kill(os.getpid(), signal.SIGTERM)
                return
            time.sleep(0.5)

    threading.Thread(target=watch, name="parent-watchdog", daemon=True).start()


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m rig.sim", description="Run a virtual lab (rig.sim).")
    p.add_argument("config", help="lab YAML, e.g. configs/labs/virtual.yaml")
    p.add_argument("--journal", help="truth journal (JSONL); default from the config")
    p.add_argument("--exit-with-parent", action="store_true",
                   help="exit when the parent process dies (for `open_rig` child labs)")
    p.add_argument("-v", "--verbose", action="count", default=0, help="log more (-vv: debug)")
    return p


def main(argv: list[str] | None = None) -> int:
    """Run the lab in the foreground; returns the exit status."""
    parent = os.getppid()
    args = _parser().parse_args(argv)
    if not logging.getLogger().handlers:
        level = (logging.WARNING, logging.INFO, logging.DEBUG)[min(args.verbose, 2)]
        logging.basicConfig(level=level, stream=sys.stderr,
                            format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    install_redaction()  # the lab's log (results/<lab>-lab.log): no card data or key in it
    if args.exit_with_parent:
        _exit_with_parent(parent)
    try:
        cfg = load_lab(args.config)
    except ConfigError as e:
        print(str(e), file=sys.stderr)
        return 2
    try:
        lab = VirtualLab(cfg, journal_path=args.journal)
    except ConfigError as e:  # e.g. a magazine slot naming an unknown card profile
        print(str(e), file=sys.stderr)
        return 2
    # A signal handler only flips a flag: Event.set() takes a lock, and a second signal (the
    # parent's death signal and the watchdog's SIGTERM arrive together) landing inside the
    # first handler's Event.set() would deadlock the main thread on that lock.
    stopped: list[int] = []
    old: dict[int, Any] = {}
    if threading.current_thread() is threading.main_thread():
        for sig in (signal.SIGINT, signal.SIGTERM):  # before start(): no window without them
            old[sig] = signal.signal(sig, lambda signum, _frame: stopped.append(signum))
    try:
        try:
            lab.start()
        except InfrastructureError as e:
            print(str(e), file=sys.stderr)
            return 1
        addrs = " ".join(f"{k}={v}" for k, v in lab.addresses().items())
        print(f"rig.sim ready lab={cfg.name} pid={os.getpid()} {addrs} journal={lab.journal_path}",
              flush=True)
        while not stopped:
            time.sleep(0.1)
            if not lab.running:
                print("rig.sim: the lab's event loop ended unexpectedly", file=sys.stderr)
                return 1
        return 0
    finally:
        lab.stop()
        for sig, handler in old.items():
            signal.signal(sig, handler)


if __name__ == "__main__":
    sys.exit(main())
