"""Terminal profiles on the controller side: a profile's console events as event kinds.

The profiles themselves are data (``configs/profiles/*.yaml``, loaded by
:mod:`rig.terminal_profiles`, which the virtual lab loads too); a real terminal model gets a
new file, not new code. This module only maps profile events to the timeline's kinds.
"""

from __future__ import annotations

from ..terminal_profiles import TerminalProfile, load_profile
from ..timeline.events import EventKind

KIND_OF: dict[str, EventKind] = {
    "boot": EventKind.BOOT_DONE,
    "login_prompt": EventKind.LOGIN_PROMPT,
    "login": EventKind.LOGIN,
    "signon_start": EventKind.SIGNON_START,
    "signon_ok": EventKind.SIGNON_OK,
    "signon_fail": EventKind.SIGNON_FAIL,
    "signon_giveup": EventKind.SIGNON_FAIL,
    "ready": EventKind.READY,
    "sale_start": EventKind.SALE_START,
    "card_prompt": EventKind.CARD_WAIT,
    "card_read": EventKind.CARD_READ,
    "card_fail": EventKind.CARD_FAIL,
    "insert_again": EventKind.CARD_RETRY,
    "fallback": EventKind.CARD_FALLBACK,
    "result": EventKind.AUTH_RESULT,
    "reversal": EventKind.REVERSAL,
}


def get_profile(name: str) -> TerminalProfile:
    """A terminal profile by name (``configs/profiles/<name>.yaml``) or path; ConfigError
    (naming the known ones, or file:line of a bad one) otherwise."""
    return load_profile(name)


def classify(profile: TerminalProfile, line: str) -> tuple[EventKind, str | None]:
    """A console line's event kind, and its canonical text when it differs from the line
    (None: keep the line as printed)."""
    m = profile.match(line)
    if m is None:
        return EventKind.CONSOLE_LINE, None
    return KIND_OF[m.event], None if profile.canonical else m.canonical()
