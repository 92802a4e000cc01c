"""Application cryptograms as EMV Book 2 defines them (Annex A1), with the `cryptography` library.

One scheme for every brand, the one EMV's Common Core Definitions use with triple DES:

- **ICC master key** (Book 2 A1.4.1, option A): ``Y`` = the rightmost 16 digits of PAN || PAN
  sequence number (left-padded with zeros), ``MK = DES3(IMK)[Y] || DES3(IMK)[Y xor FF..FF]``,
  odd parity. The card holds ``MK`` (personalised); the issuer derives it from its ``IMK``.
- **Session key** (A1.3.1, common session key derivation): ``R = ATC || 00 00 00 00 00 00``,
  ``SK = DES3(MK)[R with F0 in byte 3] || DES3(MK)[R with 0F in byte 3]``.
- **Application cryptogram** (A1.2, MAC algorithm 3 of ISO/IEC 9797-1 with padding method 2):
  over the terminal data of Book 2 Table 28 as the card's CDOL1 carried it (amount, other
  amount, country, TVR, currency, date, type, unpredictable number), then AIP, ATC and the
  issuer application data (9F10) as the card returns it.
- **ARPC** (§8.2): method 1, ``DES3(SK)[ARQC xor (ARC || 00..00)]`` (issuer authentication data
  ``91`` = ARPC || ARC); method 2, the first 4 bytes of the MAC over ``ARQC || CSU || proprietary
  authentication data`` (``91`` = ARPC || CSU || data).

Everything here can be checked by any EMV tool or HSM that implements these options (the unit
tests hold known answers from an independent implementation). Keys never reach a log line.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from cryptography.hazmat.primitives.ciphers import Cipher, modes

try:  # cryptography >= 43 keeps triple DES in the "decrepit" package
    from cryptography.hazmat.decrepit.ciphers.algorithms import TripleDES
except ImportError:  # pragma: no cover - older cryptography
    from cryptography.hazmat.primitives.ciphers.algorithms import TripleDES  # type: ignore[no-redef]

from .tags import CRYPTOGRAM_TERMINAL_DATA

__all__ = ["ArpcMethod", "CSU_APPROVED", "CryptogramInput", "arpc", "check_issuer_auth",
           "common_session_key", "cryptogram", "cryptogram_input", "derive_icc_mk",
           "issuer_approves", "issuer_auth_data", "kcv", "mac3", "session_key"]

ArpcMethod = int  # 1 or 2
CSU_APPROVED = bytes.fromhex("00800000")  # Card Status Update: byte 2 bit 8 "issuer approves"
CSU_DECLINED = bytes(4)
APPROVING_ARC = (b"00", b"10", b"11")  # approved; approved after referral / VIP (ISO 8583)


def _ecb(key: bytes, block: bytes) -> bytes:
    k = key + key[:8] if len(key) == 16 else key * 3 if len(key) == 8 else key
    enc = Cipher(TripleDES(k), modes.ECB()).encryptor()
    return enc.update(block) + enc.finalize()


def _odd_parity(key: bytes) -> bytes:
    return bytes(b & 0xFE | (bin(b >> 1).count("1") + 1) % 2 for b in key)


def kcv(key: bytes, n: int = 3) -> bytes:
    """Key check value: the first ``n`` bytes of DES3(key)[00..00]."""
    return _ecb(key, bytes(8))[:n]


def derive_icc_mk(imk: bytes, pan: str, psn: str = "00") -> bytes:
    """ICC master key from the issuer master key (option A; PAN of up to 16 digits + PSN:
    option A applies to every PAN length here, as Book 2 allows for PANs it was defined for)."""
    if len(imk) != 16:
        raise ValueError("IMK must be 16 bytes (double-length triple DES)")
    digits = (pan + (psn or "00")).zfill(16)[-16:]
    if not digits.isdigit():
        raise ValueError("PAN and PSN must be digits")
    y = bytes.fromhex(digits)
    left = _ecb(imk, y)
    right = _ecb(imk, bytes(b ^ 0xFF for b in y))
    return _odd_parity(left + right)


def common_session_key(mk: bytes, r: bytes) -> bytes:
    """EMV common session key derivation (A1.3.1) for the diversification value ``r``."""
    if len(r) != 8:
        raise ValueError("R must be 8 bytes")
    left = _ecb(mk, r[:2] + b"\xf0" + r[3:])
    right = _ecb(mk, r[:2] + b"\x0f" + r[3:])
    return _odd_parity(left + right)


def session_key(mk: bytes, atc: bytes) -> bytes:
    """The application cryptogram's session key: R = ATC || 00 * 6."""
    if len(atc) != 2:
        raise ValueError("ATC must be 2 bytes")
    return common_session_key(mk, atc + bytes(6))


def mac3(key: bytes, data: bytes) -> bytes:
    """ISO/IEC 9797-1 MAC algorithm 3 (retail MAC) with padding method 2, 8 bytes."""
    padded = data + b"\x80" + bytes((-(len(data) + 1)) % 8)
    k1, k2 = key[:8], key[8:16]
    h = bytes(8)
    for i in range(0, len(padded), 8):
        h = _ecb(k1, bytes(a ^ b for a, b in zip(h, padded[i:i + 8], strict=True)))
    return _ecb(k1, _ecb_decrypt(k2, h))


def _ecb_decrypt(key: bytes, block: bytes) -> bytes:
    k = key * 3
    dec = Cipher(TripleDES(k), modes.ECB()).decryptor()
    return dec.update(block) + dec.finalize()


@dataclass(frozen=True, slots=True)
class CryptogramInput:
    """What an application cryptogram is computed over (see the module doc)."""

    terminal: bytes  # Table 28 terminal data, in order
    aip: bytes
    atc: bytes
    iad: bytes

    def __bytes__(self) -> bytes:
        return self.terminal + self.aip + self.atc + self.iad

    def __repr__(self) -> str:
        return f"CryptogramInput({len(bytes(self))} bytes)"


def cryptogram_input(values: Mapping[int, bytes], *, aip: bytes, atc: bytes,
                     iad: bytes) -> CryptogramInput:
    """The input from tag values (as the CDOL carried them); raises KeyError naming a missing
    tag, ValueError for one of the wrong length."""
    out = bytearray()
    for tag, n in CRYPTOGRAM_TERMINAL_DATA:
        if tag not in values:
            raise KeyError(f"{tag:X}")
        v = values[tag]
        if len(v) != n:
            raise ValueError(f"{tag:X} is {len(v)} bytes, the cryptogram takes {n}")
        out += v
    return CryptogramInput(bytes(out), bytes(aip), bytes(atc), bytes(iad))


def cryptogram(mk: bytes, data: CryptogramInput) -> bytes:
    """The 8-byte application cryptogram (ARQC, TC or AAC alike) under the card's MK."""
    return mac3(session_key(mk, data.atc), bytes(data))


def arpc(mk: bytes, atc: bytes, arqc: bytes, *, method: ArpcMethod, arc: bytes = b"00",
         csu: bytes = CSU_APPROVED, proprietary: bytes = b"") -> bytes:
    """The issuer's answer to ``arqc`` (8 bytes for method 1, 4 for method 2)."""
    sk = session_key(mk, atc)
    if method == 1:
        y = arc[:2].ljust(2, b"\x00") + bytes(6)
        return _ecb(sk, bytes(a ^ b for a, b in zip(arqc, y, strict=True)))
    if method == 2:
        return mac3(sk, arqc + csu + proprietary)[:4]
    raise ValueError(f"ARPC method {method}: 1 or 2")


def issuer_auth_data(mk: bytes, atc: bytes, arqc: bytes, *, method: ArpcMethod,
                     approved: bool, arc: bytes) -> bytes:
    """Tag 91 as the issuer sends it: ARPC || ARC (method 1) or ARPC || CSU (method 2)."""
    if method == 1:
        return arpc(mk, atc, arqc, method=1, arc=arc) + arc[:2]
    csu = CSU_APPROVED if approved else CSU_DECLINED
    return arpc(mk, atc, arqc, method=2, csu=csu) + csu


def check_issuer_auth(mk: bytes, atc: bytes, arqc: bytes, iad: bytes, *,
                      method: ArpcMethod) -> bool | None:
    """Whether ``iad`` (tag 91) is the issuer's genuine answer to ``arqc``: True / False, or
    None when the issuer approved nothing (the card then decides on the ARC)."""
    if method == 1:
        if len(iad) < 10:
            return False
        return arpc(mk, atc, arqc, method=1, arc=iad[8:10]) == iad[:8]
    if len(iad) < 8:
        return False
    return arpc(mk, atc, arqc, method=2, csu=iad[4:8], proprietary=iad[8:]) == iad[:4]


def issuer_approves(iad: bytes, *, method: ArpcMethod) -> bool:
    """What a verified tag 91 says: the ARC (method 1) or the CSU's approval bit (method 2)."""
    if method == 1:
        return iad[8:10] in APPROVING_ARC
    return len(iad) >= 8 and bool(iad[5] & 0x80)


def fit(values: Iterable[tuple[int, bytes]]) -> dict[int, bytes]:
    """First occurrence of each tag wins (a DOL may name a tag twice)."""
    out: dict[int, bytes] = {}
    for t, v in values:
        out.setdefault(t, v)
    return out
