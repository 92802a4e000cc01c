"""The lab's fault ledger: which faults are on now, held by which process, since when.

A small JSON file beside the store (``results/<lab>-faults.json``), rewritten atomically
(temp file + rename) under an ``fcntl`` lock, so ``rig fault list`` in one shell sees what a rig
in another holds, and the next rig after a kill -9 can name the leftovers it sweeps. The
ledger is a record, not the truth: the sweep checks the world itself (nftables tables, links,
PSU setpoints) and undoes what it finds, listed here or not.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from ..timeline.store import pid_alive

__all__ = ["Ledger", "pid_alive"]


class Ledger:
    def __init__(self, path: str | Path, pid: int | None = None) -> None:
        self.path = Path(path)
        self.pid = os.getpid() if pid is None else pid

    @contextlib.contextmanager
    def _locked(self) -> Iterator[list[dict[str, Any]]]:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.path.with_suffix(".lock"), "a+") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            entries = self._read()
            before = json.dumps(entries, sort_keys=True)
            yield entries
            if json.dumps(entries, sort_keys=True) != before:
                tmp = self.path.with_suffix(f".{os.getpid()}.tmp")
                tmp.write_text(json.dumps(entries, indent=1), encoding="utf-8")
                os.replace(tmp, self.path)

    def _read(self) -> list[dict[str, Any]]:
        try:
            data = json.loads(self.path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            return []
        except (OSError, ValueError):  # a torn or foreign file: start again, say nothing lost
            return []
        return [e for e in data if isinstance(e, dict)] if isinstance(data, list) else []

    def add(self, entry: dict[str, Any]) -> None:
        with self._locked() as entries:
            entries.append({**entry, "pid": self.pid})

    def remove(self, fault_id: str) -> None:
        with self._locked() as entries:
            entries[:] = [e for e in entries
                          if not (e.get("pid") == self.pid and e.get("id") == fault_id)]

    def entries(self) -> list[dict[str, Any]]:
        """Every entry, each with ``alive``: whether its holder process still runs."""
        with self._locked() as entries:
            return [{**e, "alive": pid_alive(int(e.get("pid", 0) or 0))} for e in entries]

    def drop_dead(self) -> list[dict[str, Any]]:
        """Remove and return the entries of processes that are gone (crashed rigs)."""
        with self._locked() as entries:
            dead = [e for e in entries if not pid_alive(int(e.get("pid", 0) or 0))]
            entries[:] = [e for e in entries if e not in dead]
            return dead

    def drop_pid(self, pid: int) -> None:
        with self._locked() as entries:
            entries[:] = [e for e in entries if e.get("pid") != pid]
