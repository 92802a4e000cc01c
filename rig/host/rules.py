"""Response rules of the acquirer host: processing delay and response-code overrides.

Small on purpose; later issues add MAC and PAN rules. Overrides are thread-safe so a test
(or a host fault) can change them while the host serves.
"""

from __future__ import annotations

import threading

from rig.config import HostConfig

APPROVED = "00"


class ResponseRules:
    """Decides how the host answers a terminal (``terminal`` is a name from the lab config)."""

    def __init__(self, host: HostConfig) -> None:
        self._host = host
        self._lock = threading.Lock()
        self._rc: dict[str | None, str] = {}
        self._delay_ms: dict[str | None, float] = {}

    def processing_delay_s(self, terminal: str | None) -> float:
        """Delay between request received and response sent (override, rule, else default)."""
        with self._lock:
            if terminal in self._delay_ms:
                return self._delay_ms[terminal] / 1000.0
        rule = self._host.rules.get(terminal) if terminal is not None else None
        ms = rule.processing_ms if rule is not None else self._host.processing_ms
        return ms / 1000.0

    def rc_for(self, terminal: str | None, default: str = APPROVED) -> str:
        """The response code to send: an override for this terminal, else ``default``."""
        with self._lock:
            return self._rc.get(terminal, default)

    def set_rc(self, terminal: str | None, rc: str | None) -> None:
        """Force response code ``rc`` for ``terminal`` (None clears the override)."""
        if rc is not None and (len(rc) != 2 or not rc.isascii() or not rc.isalnum()):
            raise ValueError(f"response code must be 2 alphanumeric characters, got {rc!r}")
        with self._lock:
            if rc is None:
                self._rc.pop(terminal, None)
            else:
                self._rc[terminal] = rc

    def set_delay_ms(self, terminal: str | None, ms: float | None) -> None:
        """Override the processing delay for ``terminal`` (None clears the override)."""
        if ms is not None and ms < 0:
            raise ValueError(f"delay must be >= 0 ms, got {ms}")
        with self._lock:
            if ms is None:
                self._delay_ms.pop(terminal, None)
            else:
                self._delay_ms[terminal] = ms

    def clear(self) -> None:
        with self._lock:
            self._rc.clear()
            self._delay_ms.clear()
