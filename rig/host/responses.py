"""What the host makes of a network-management request, per dialect (CUP, ISO 8583:1987).

Thin glue over the :mod:`rig.iso8583` builders, so the session code stays dialect-free.
"""

from __future__ import annotations

from datetime import datetime
from typing import Literal

from rig.core.errors import ProtocolError
from rig.iso8583 import cup, iso87
from rig.iso8583.dialects import Dialect, Message
from rig.iso8583.keys import KEY_MODES

Kind = Literal["signon", "signoff", "echo"]
_NETWORK_MTIS = {"0800", "0820"}
_CODES: dict[str, Kind] = {"002": "signoff", "301": "echo"}


def classify(dialect: Dialect, msg: Message) -> Kind | None:
    """sign-on / sign-off / echo, or None for a message the host does not serve."""
    if msg.get("t") not in _NETWORK_MTIS:
        return None
    code = dialect.network_code(msg)  # ProtocolError when 60.3 / DE70 is missing
    if dialect.name == "cup" and code in KEY_MODES:
        return "signon" if msg.get("t") == "0800" else None
    if dialect.name != "cup" and code == iso87.SIGNON:
        return "signon"
    kind = _CODES.get(code)
    if kind is None:
        raise ProtocolError(f"{msg.get('t')}: network code {code!r} not supported by the host")
    return kind


def key_mode(dialect: Dialect, msg: Message, configured: str | None) -> str | None:
    """The key mode to answer with: CUP's 60.3 (what the terminal can decode), else config."""
    return cup.key_mode_of(msg) if dialect.name == "cup" else configured


def batch(dialect: Dialect, msg: Message) -> str | None:
    """60.2 (batch number) of a CUP request; None for ISO 87."""
    f60 = msg.get("60")
    return f60[2:8] if dialect.name == "cup" and isinstance(f60, str) else None


def carries_keys(dialect: Dialect) -> bool:
    """Whether the dialect's sign-on reply delivers working keys (CUP field 62)."""
    return dialect.name == "cup"


def signon_response(dialect: Dialect, request: Message, *, rc: str, field62: bytes | None,
                    rrn: str) -> Message:
    if dialect.name == "cup":
        return cup.signon_response(request, rc=rc, field62=field62, rrn=rrn, when=datetime.now())
    return iso87.network_response(request, rc=rc)


def network_response(dialect: Dialect, request: Message, *, rc: str, rrn: str) -> Message:
    if dialect.name == "cup":
        return cup.network_response(request, rc=rc, when=datetime.now(), rrn=rrn)
    return iso87.network_response(request, rc=rc)
