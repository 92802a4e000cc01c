"""Sign-on series: power-cycle terminals n times each, terminals in parallel, with progress."""

from __future__ import annotations

import threading
from concurrent.futures import FIRST_EXCEPTION, ThreadPoolExecutor, wait
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .bench import Rig


def run_series(rig: Rig, terminals: list[str], n: int, *, off_s: float | None,
               timeout_s: float, progress: bool) -> Any:
    import pandas as pd
    from tqdm.auto import tqdm

    rows: list[dict[str, Any]] = []
    lock = threading.Lock()
    bar = tqdm(total=n * len(terminals), desc="sign-on cycles", unit="cycle", disable=not progress)
    failed = threading.Event()

    def one_terminal(t: str) -> None:
        for i in range(n):
            if failed.is_set():
                return
            rig.power_cycle(t, off_s=off_s)
            s = rig.wait_signon(t, timeout_s=timeout_s)
            with lock:
                rows.append({**s.as_dict(), "i": i + 1})
                bar.update(1)
                bar.set_postfix(ok=sum(r["ok"] for r in rows), refresh=False)

    pool = ThreadPoolExecutor(max_workers=len(terminals), thread_name_prefix="series")
    try:
        futures = [pool.submit(one_terminal, t) for t in terminals]
        done, _ = wait(futures, return_when=FIRST_EXCEPTION)
        for f in done:
            if f.exception() is not None:
                failed.set()
                wait(futures)
                raise f.exception()  # type: ignore[misc]
    except BaseException:
        failed.set()
        rig.stop()  # wake waiting workers; the rig's close() marks open cycles aborted
        wait(futures, timeout=5.0)
        raise
    finally:
        pool.shutdown(wait=False, cancel_futures=True)
        bar.close()
    df = pd.DataFrame(rows)
    if not df.empty:
        df = df.sort_values(["terminal", "i"]).reset_index(drop=True)
    return df
