"""ISO 8583 for POS terminals: dialects (CUP, ISO 87), framing, MAC and working keys.

Shared core: pure functions over bytes, no I/O of its own.
"""

from __future__ import annotations

from .dialects import Dialect, Message, response_mti
from .framing import ConnectionClosed, frame, read_frame, read_frame_async
from .keys import (
    KEY_MODES,
    WorkingKeys,
    decode_field62,
    encode_field62,
    generate_working_keys,
    kcv,
)
from .mac import cup_mac, x919_mac
from .registry import get_dialect

__all__ = [
    "KEY_MODES",
    "ConnectionClosed",
    "Dialect",
    "Message",
    "WorkingKeys",
    "cup_mac",
    "decode_field62",
    "encode_field62",
    "frame",
    "generate_working_keys",
    "get_dialect",
    "kcv",
    "read_frame",
    "read_frame_async",
    "response_mti",
    "x919_mac",
]
