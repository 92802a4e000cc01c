"""The virtual lab's control port, seen from the controller: card faults and behaviour quirks.

The controller never imports :mod:`rig.sim`; it reaches the lab the way it reaches a bench
fixture, over a socket (``sim.control_listen``): one JSON request per line, one JSON reply per
line, ``{"ok": true, ...}`` or ``{"ok": false, "error": "..."}``.
"""

from __future__ import annotations

import json
import socket
import threading
from typing import Any

from ..core.errors import InfrastructureError, TestError


class LabControl:
    def __init__(self, address: str, timeout_s: float = 5.0) -> None:
        host, _, port = address.rpartition(":")
        self.address = address
        self._addr = (host.strip("[]"), int(port))
        self.timeout_s = timeout_s
        self._lock = threading.Lock()

    def request(self, **req: Any) -> dict[str, Any]:
        """Send one request; returns the reply (raises when the lab refuses or is unreachable)."""
        with self._lock:
            try:
                with socket.create_connection(self._addr, self.timeout_s) as s:
                    s.settimeout(self.timeout_s)
                    s.sendall(json.dumps(req).encode() + b"\n")
                    buf = b""
                    while not buf.endswith(b"\n"):
                        chunk = s.recv(65536)
                        if not chunk:
                            break
                        buf += chunk
            except OSError as e:
                raise InfrastructureError(
                    f"virtual lab control port {self.address}: {e.strerror or e}; is the lab "
                    f"running (rig lab up)?") from None
        try:
            reply = json.loads(buf)
        except ValueError:
            raise InfrastructureError(f"virtual lab control port {self.address}: answered "
                                      f"{buf[:80]!r}, not JSON") from None
        if not reply.get("ok"):
            raise TestError(f"virtual lab refused {req.get('op')}: {reply.get('error')}")
        return reply

    def card_fault(self, card: str | None, fault: str | None) -> None:
        """Switch a defect on every emulated card of profile ``card`` (None clears it)."""
        self.request(op="card_fault", card=card, fault=fault)

    def quirk(self, terminal: str, quirk: str, on: bool = True) -> None:
        """Break one of a virtual terminal's behaviours (e.g. ``no_reversal``)."""
        self.request(op="quirk", terminal=terminal, quirk=quirk, on=on)

    def state(self, terminal: str) -> dict[str, Any]:
        return self.request(op="state", terminal=terminal)

    def status(self) -> dict[str, Any]:
        return self.request(op="status")

    def clear(self) -> dict[str, Any]:
        """Clear every card fault and quirk; the reply lists what was active."""
        return self.request(op="clear")
