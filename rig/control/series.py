"""Sign-on series: power-cycle terminals n times each, terminals in parallel, with progress.

Each terminal runs in its own worker under its own cycle object: a terminal whose equipment
fails (console port gone, ECR dead) ends its own part with the error in its row; the others
go on. Only a cancel (Ctrl-C, ``stop()``) or a wrong test (TestError) ends the whole series.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from ..core.errors import RigError, TestError
from .cycles import TerminalCycle
from .hardware import Hardware
from .signon import power_cycle, wait_signon

log = logging.getLogger(__name__)

Progress = Callable[[int, int, int], None]  # (done, ok, total)


def run_series(hw: Hardware, cycles: list[TerminalCycle], n: int, run_id: int, *,
               off_s: float | None, timeout_s: float, owner: str | None = None,
               progress: Progress | None = None) -> list[dict[str, Any]]:
    """Rows (one per cycle, ``i`` counting from 1), sorted by terminal and ``i``."""
    rows: list[dict[str, Any]] = []
    lock = threading.Lock()
    total = n * len(cycles)
    fatal: list[BaseException] = []

    def one_terminal(tc: TerminalCycle) -> None:
        with tc.using(owner):
            for i in range(n):
                if fatal:
                    return
                try:
                    power_cycle(hw, tc, run_id, off_s=off_s, owner=owner)
                    s = wait_signon(hw, tc, timeout_s=timeout_s)
                    row = {**s.as_dict(), "i": i + 1}
                except TestError:
                    raise
                except RigError as e:  # this terminal's trouble: its row says so, it stops
                    log.error("%s: series stopped for this terminal at cycle %d: %s",
                              tc.terminal, i + 1, e)
                    row = {"terminal": tc.terminal, "cycle": tc.cycle_id, "ok": False,
                           "error": f"{type(e).__name__}: {e}", "i": i + 1}
                    with lock:
                        rows.append(row)
                        if progress:
                            progress(len(rows), sum(bool(r["ok"]) for r in rows), total)
                    return
                with lock:
                    rows.append(row)
                    if progress:
                        progress(len(rows), sum(bool(r["ok"]) for r in rows), total)

    def guarded(tc: TerminalCycle) -> None:
        try:
            one_terminal(tc)
        except BaseException as e:
            fatal.append(e)
            for other in cycles:  # wake the other workers
                other.cancel.set()

    pool = ThreadPoolExecutor(max_workers=max(1, len(cycles)), thread_name_prefix="series")
    try:
        futures = [pool.submit(guarded, tc) for tc in cycles]
        for f in futures:
            f.result()
    except BaseException:
        for tc in cycles:
            tc.cancel.set()
        raise
    finally:
        pool.shutdown(wait=True, cancel_futures=True)
    if fatal:
        first = next((e for e in fatal if not isinstance(e, KeyboardInterrupt)), fatal[0])
        raise first
    return sorted(rows, key=lambda r: (r["terminal"], r["i"]))
