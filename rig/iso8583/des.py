"""Single and triple DES in ECB mode (the only block cipher modes the CUP dialect uses)."""

from __future__ import annotations

from cryptography.hazmat.primitives.ciphers import Cipher, modes

try:  # cryptography >= 43 moved TripleDES to the "decrepit" package
    from cryptography.hazmat.decrepit.ciphers.algorithms import TripleDES
except ImportError:  # pragma: no cover - older cryptography
    from cryptography.hazmat.primitives.ciphers.algorithms import TripleDES  # type: ignore[no-redef]

__all__ = ["tdes_decrypt", "tdes_encrypt"]


def _tdes_key(key: bytes) -> bytes:
    """Expand an 8-byte (single DES) or 16-byte (K1|K2) key to the 24 bytes TripleDES takes."""
    if len(key) == 8:
        return key * 3  # K|K|K: triple DES degenerates to single DES
    if len(key) == 16:
        return key + key[:8]  # K1|K2|K1
    if len(key) == 24:
        return key
    raise ValueError(f"DES key must be 8, 16 or 24 bytes, got {len(key)}")


def _check_blocks(data: bytes) -> None:
    if len(data) % 8:
        raise ValueError(f"DES data must be a multiple of 8 bytes, got {len(data)}")


def tdes_encrypt(key: bytes, data: bytes) -> bytes:
    """ECB-encrypt `data` (multiple of 8 bytes); an 8-byte key means single DES."""
    _check_blocks(data)
    enc = Cipher(TripleDES(_tdes_key(key)), modes.ECB()).encryptor()
    return enc.update(data) + enc.finalize()


def tdes_decrypt(key: bytes, data: bytes) -> bytes:
    """ECB-decrypt `data` (multiple of 8 bytes); an 8-byte key means single DES."""
    _check_blocks(data)
    dec = Cipher(TripleDES(_tdes_key(key)), modes.ECB()).decryptor()
    return dec.update(data) + dec.finalize()
