"""Working keys (PIK, MAK, TDK) carried in CUP `0810` field 62, and their check values."""

from __future__ import annotations

import hmac
import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

from rig.core.errors import ProtocolError

from .des import tdes_decrypt, tdes_encrypt

__all__ = [
    "KEY_MODES",
    "KeyMode",
    "WorkingKeys",
    "decode_field62",
    "encode_field62",
    "field62_length",
    "generate_working_keys",
    "kcv",
]

KeyMode = Literal["001", "003", "004"]
KEY_MODES: tuple[str, ...] = ("001", "003", "004")
"""60.3 of a sign-on: 001 single DES, 003 double-length, 004 double-length + TDK."""

_KEY_LEN = {"001": 8, "003": 16, "004": 16}


@dataclass(frozen=True)
class WorkingKeys:
    """The day's clear working keys. Never log or store them (PCI DSS)."""

    pik: bytes
    mak: bytes
    tdk: bytes | None = None

    def __post_init__(self) -> None:
        for name in ("pik", "mak", "tdk"):
            key = getattr(self, name)
            if key is not None and len(key) not in (8, 16):
                raise ValueError(f"{name} must be 8 or 16 bytes, got {len(key)}")

    @property
    def mak8(self) -> bytes:
        """The part of the MAK terminals actually use: its first 8 bytes (single DES)."""
        return self.mak[:8]

    def __repr__(self) -> str:  # keys stay out of logs and tracebacks
        tdk = "set" if self.tdk else "None"
        return f"WorkingKeys(pik=<{len(self.pik)} bytes>, mak=<{len(self.mak)} bytes>, tdk={tdk})"


def kcv(key: bytes) -> bytes:
    """Key check value: first 4 bytes of (T)DES-encrypting 8 zero bytes under the clear key.

    An 8-byte key gives the single-DES check value (used for the MAK: ``kcv(mak[:8])``).
    """
    return tdes_encrypt(key, bytes(8))[:4]


def _mode(key_mode: str) -> str:
    if key_mode not in _KEY_LEN:
        raise ProtocolError(f"unknown key mode {key_mode!r}: expected one of {KEY_MODES}")
    return key_mode


def _check_tmk(tmk: bytes) -> None:
    if len(tmk) not in (16, 24):
        raise ValueError(f"TMK must be 16 (or 24) bytes, got {len(tmk)}")


def _odd_parity(key: bytes) -> bytes:
    return bytes(b & 0xFE | (bin(b >> 1).count("1") + 1) % 2 for b in key)


def generate_working_keys(
    key_mode: str, randbytes: Callable[[int], bytes] = os.urandom
) -> WorkingKeys:
    """Fresh random working keys (odd parity) for `key_mode`.

    For 003/004 the MAK is 8 random bytes followed by 8 zero bytes, as CUP hosts send it
    (terminals use only the first half).
    """
    n = _KEY_LEN[_mode(key_mode)]
    pik = _odd_parity(randbytes(n))
    mak = _odd_parity(randbytes(8)) + bytes(n - 8)
    tdk = _odd_parity(randbytes(16)) if key_mode == "004" else None
    return WorkingKeys(pik=pik, mak=mak, tdk=tdk)


def field62_length(key_mode: str) -> int:
    """Length of field 62 for a key mode: 24 / 40 / 60 bytes."""
    n = _KEY_LEN[_mode(key_mode)]
    return 2 * (n + 4) + (20 if key_mode == "004" else 0)


def encode_field62(tmk: bytes, keys: WorkingKeys, key_mode: str) -> bytes:
    """Field 62 of a `0810`: each key TDES-ECB encrypted under `tmk`, followed by its KCV.

    001: PIK 8 | KCV 4 | MAK 8 | KCV 4; 003: PIK 16 | KCV 4 | MAK 16 | KCV 4;
    004: 003 + TDK 16 | KCV 4. The MAK's KCV is the single-DES one of its first 8 bytes.
    """
    _check_tmk(tmk)
    n = _KEY_LEN[_mode(key_mode)]
    if len(keys.pik) != n or len(keys.mak) != n:
        raise ValueError(f"key mode {key_mode} needs {n}-byte PIK and MAK")
    out = tdes_encrypt(tmk, keys.pik) + kcv(keys.pik)
    out += tdes_encrypt(tmk, keys.mak) + kcv(keys.mak8)
    if key_mode == "004":
        if keys.tdk is None or len(keys.tdk) != 16:
            raise ValueError("key mode 004 needs a 16-byte TDK")
        out += tdes_encrypt(tmk, keys.tdk) + kcv(keys.tdk)
    return out


def decode_field62(tmk: bytes, data: bytes, key_mode: str) -> WorkingKeys:
    """Decrypt field 62 under `tmk` and check every KCV; ProtocolError when anything is off."""
    _check_tmk(tmk)
    n = _KEY_LEN[_mode(key_mode)]
    want = field62_length(key_mode)
    if len(data) != want:
        raise ProtocolError(f"field 62 is {len(data)} bytes, key mode {key_mode} needs {want}")
    step = n + 4
    found: list[bytes] = []
    names = ["PIK", "MAK", "TDK"][: len(data) // step]
    for i, name in enumerate(names):
        chunk = data[i * step : (i + 1) * step]
        key = tdes_decrypt(tmk, chunk[:n])
        check = kcv(key[:8] if name == "MAK" else key)
        if not hmac.compare_digest(check, chunk[n:]):
            raise ProtocolError(f"field 62: {name} check value mismatch (wrong TMK?)")
        found.append(key)
    return WorkingKeys(pik=found[0], mak=found[1], tdk=found[2] if len(found) > 2 else None)
