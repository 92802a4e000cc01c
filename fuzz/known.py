"""Crashes found by fuzzing in modules owned elsewhere: reported, not yet fixed.

A crash whose target, exception type and file match an entry here is counted as *known* (shown
in its own column, it does not fail ``make fuzz`` or the ``make test`` slice). Its reproducer is
``fuzz/corpus/<target>/open-*.bin``; the slice checks it still crashes. When the owner
fixes it, delete the entry and drop the ``open-`` prefix from the file name: it stays as a
regression case.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Known:
    target: str | None  # None: any target (a shared loader)
    kind: str  # exception type name, as in the crash key ("*": any)
    file: str  # where it is raised (no line: lines move)
    what: str
    func: str | None = None  # and in this function ("rig/config.py:536 in read_yaml")

    def matches(self, target: str, kind: str, where: str) -> bool:
        return (self.target in (None, target) and self.kind in ("*", kind)
                and where.startswith(self.file + ":")
                and (self.func is None or where.endswith(f" in {self.func}")))


KNOWN: tuple[Known, ...] = ()
"""None open now: every crash found so far is fixed (``fuzz/corpus/*/fixed-*.bin``)."""


def known(target: str, kind: str, where: str) -> Known | None:
    return next((k for k in KNOWN if k.matches(target, kind, where)), None)
