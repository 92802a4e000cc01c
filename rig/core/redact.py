"""PCI DSS redaction: mask PANs (first 6 / last 4), drop track data, PIN blocks and keys.

Used on every event, log line, exception text and report. Test cards are treated exactly like
real ones, so a real card used by mistake cannot leak.
"""

from __future__ import annotations

import re
from collections.abc import Mapping

# ISO 8583 fields that must never be stored: 35/36 track 2/3, 45 track 1, 52 PIN block,
# 53 security info, 55 ICC data (cryptograms), 62 (CUP working keys), 64/128 MAC.
SECRET_FIELDS = frozenset({"35", "36", "45", "52", "53", "55", "62", "64", "128"})
PAN_FIELDS = frozenset({"2"})

_TRACK2 = re.compile(r";?\d{12,19}=\d{4,}[0-9?]*")
_PAN = re.compile(r"(?<!\d)(\d{6})(\d{3,})(\d{4})(?!\d)")  # any run of 13+ digits


def mask_pan(pan: str) -> str:
    """``6222021234567890123`` → ``622202*********0123``; short strings fully masked."""
    pan = pan.strip()
    if len(pan) < 13:
        return "*" * len(pan)
    return pan[:6] + "*" * (len(pan) - 10) + pan[-4:]


def redact_text(text: str) -> str:
    """Remove track data and mask anything that looks like a PAN (13–19 digits)."""
    text = _TRACK2.sub("<track2>", text)
    return _PAN.sub(lambda m: m.group(1) + "*" * len(m.group(2)) + m.group(3), text)


def redact_message(msg: Mapping[str, object]) -> dict[str, object]:
    """An ISO 8583 message dict safe to record: PAN masked, secret fields replaced by
    their length."""
    out: dict[str, object] = {}
    for k, v in msg.items():
        if k in SECRET_FIELDS:
            out[k] = f"<{len(v) if hasattr(v, '__len__') else '?'} bytes redacted>"
        elif k in PAN_FIELDS and isinstance(v, str):
            out[k] = mask_pan(v)
        elif isinstance(v, bytes | bytearray):
            out[k] = f"<{len(v)} bytes>"
        elif isinstance(v, str):
            out[k] = redact_text(v)
        else:
            out[k] = v
    return out
