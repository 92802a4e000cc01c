"""Terminal profiles: how a terminal model's console lines map to event kinds.

A profile is data (ordered regexes), so a real terminal model gets a new entry, not new code.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from ..core.errors import ConfigError
from ..timeline.events import EventKind


@dataclass(frozen=True)
class TerminalProfile:
    name: str
    rules: tuple[tuple[re.Pattern[str], EventKind], ...]

    def classify(self, line: str) -> EventKind:
        for rx, kind in self.rules:
            if rx.search(line):
                return kind
        return EventKind.CONSOLE_LINE


def _profile(name: str, *rules: tuple[str, EventKind]) -> TerminalProfile:
    return TerminalProfile(name, tuple((re.compile(rx), kind) for rx, kind in rules))


PROFILES: dict[str, TerminalProfile] = {
    # the virtual terminal of rig.sim: "<uptime_ms> <LEVEL> <EVENT> ..."
    "vlab": _profile(
        "vlab",
        (r"^\d+ \w+ BOOT done", EventKind.BOOT_DONE),
        (r"^\d+ \w+ LOGIN ok", EventKind.LOGIN),
        (r"^\d+ \w+ SIGNON ok", EventKind.SIGNON_OK),
        (r"^\d+ \w+ SIGNON (fail|giveup)", EventKind.SIGNON_FAIL),
        (r"^\d+ \w+ READY", EventKind.READY),
        (r"^\d+ \w+ SALE start", EventKind.SALE_START),
        (r"^\d+ \w+ CARD wait", EventKind.CARD_WAIT),
        (r"^\d+ \w+ CARD read", EventKind.CARD_READ),
        (r"^\d+ \w+ CARD fail", EventKind.CARD_FAIL),
        (r"^\d+ \w+ CARD insert again", EventKind.CARD_RETRY),
        (r"^\d+ \w+ CARD fallback", EventKind.CARD_FALLBACK),
        (r"^\d+ \w+ RESULT ", EventKind.AUTH_RESULT),
        (r"^\d+ \w+ REVERSAL ", EventKind.REVERSAL),
    ),
}


def get_profile(name: str) -> TerminalProfile:
    try:
        return PROFILES[name]
    except KeyError:
        raise ConfigError(f"unknown terminal profile {name!r}; known: {', '.join(PROFILES)}") from None
