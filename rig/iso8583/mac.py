"""Message authentication codes: the CUP "ECB" MAC and the ANSI X9.19 retail MAC."""

from __future__ import annotations

from .des import tdes_decrypt, tdes_encrypt

__all__ = ["cup_mac", "x919_mac"]


def _xor(a: bytes, b: bytes) -> bytes:
    return bytes(x ^ y for x, y in zip(a, b, strict=True))


def _pad8(data: bytes) -> bytes:
    """Zero-pad to a multiple of 8 bytes (nothing added when already aligned; empty -> one block)."""
    return data + bytes(-len(data) % 8) if data else bytes(8)


def cup_mac(mak8: bytes, data: bytes) -> bytes:
    """CUP POS "ECB" MAC of `data` under the single-DES key `mak8`: 8 ASCII hex chars.

    XOR all 8-byte blocks (last one zero-padded), hex-expand the result to 16 ASCII
    chars, DES-encrypt the first 8, XOR with the last 8, DES again, hex-expand and keep
    the first 8 chars.
    """
    if len(mak8) != 8:
        raise ValueError(f"CUP MAC key must be 8 bytes, got {len(mak8)}")
    padded = _pad8(data)
    acc = bytes(8)
    for i in range(0, len(padded), 8):
        acc = _xor(acc, padded[i : i + 8])
    expanded = acc.hex().upper().encode("ascii")
    step = tdes_encrypt(mak8, expanded[:8])
    step = tdes_encrypt(mak8, _xor(step, expanded[8:]))
    return step.hex().upper().encode("ascii")[:8]


def x919_mac(mak: bytes, data: bytes) -> bytes:
    """ANSI X9.19 retail MAC (ISO 9797-1 algorithm 3, zero padding): 8 binary bytes.

    An 8-byte key gives plain X9.9 DES CBC-MAC.
    """
    if len(mak) not in (8, 16):
        raise ValueError(f"X9.19 MAC key must be 8 or 16 bytes, got {len(mak)}")
    k1 = mak[:8]
    padded = _pad8(data)
    acc = bytes(8)
    for i in range(0, len(padded), 8):
        acc = tdes_encrypt(k1, _xor(acc, padded[i : i + 8]))
    if len(mak) == 16:
        acc = tdes_encrypt(k1, tdes_decrypt(mak[8:], acc))
    return acc
