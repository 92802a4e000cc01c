"""Per-terminal session state of the acquirer host (working keys, batch, signed-on flag).

Kept in memory only. Keys are never logged, recorded or shown in a ``repr``; later rules
(MAC checks, PIN translation) read them from here.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field, replace

from rig.iso8583.keys import WorkingKeys


@dataclass(frozen=True, slots=True)
class HostState:
    """One terminal's session as the host sees it."""

    terminal: str
    signed_on: bool = False
    batch: str | None = None
    key_mode: str | None = None
    signons: int = 0
    last_signon_mono_ns: int | None = None
    keys: WorkingKeys | None = field(default=None, repr=False, compare=False)


class HostStates:
    """Thread-safe registry of :class:`HostState` by terminal name."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._states: dict[str, HostState] = {}

    def get(self, terminal: str) -> HostState:
        with self._lock:
            return self._states.get(terminal) or HostState(terminal)

    def signed_on(self, terminal: str, keys: WorkingKeys | None, *, batch: str | None,
                  key_mode: str | None, mono_ns: int) -> HostState:
        """A sign-on was answered with rc 00: the new keys (None: dialect without keys)
        replace the old ones."""
        with self._lock:
            old = self._states.get(terminal) or HostState(terminal)
            new = replace(old, signed_on=True, batch=batch, key_mode=key_mode, keys=keys,
                          signons=old.signons + 1, last_signon_mono_ns=mono_ns)
            self._states[terminal] = new
            return new

    def signed_off(self, terminal: str) -> HostState:
        """Sign-off (or a failed sign-on): the keys are forgotten."""
        with self._lock:
            old = self._states.get(terminal) or HostState(terminal)
            new = replace(old, signed_on=False, keys=None)
            self._states[terminal] = new
            return new

    def snapshot(self) -> dict[str, HostState]:
        with self._lock:
            return dict(self._states)
