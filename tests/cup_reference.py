"""An independent CUP POS codec for tests, written from DESIGN.md §1 only.

It deliberately does NOT import :mod:`rig.iso8583`: the host's real replies are checked against
this hand-written parser (packing rules, reply restrictions, field 62 key block and KCVs), so
a shared misunderstanding in the production codec cannot make both sides agree by accident.
"""

from __future__ import annotations

from dataclasses import dataclass

from cryptography.hazmat.decrepit.ciphers.algorithms import TripleDES
from cryptography.hazmat.primitives.ciphers import Cipher, modes

# field -> (kind, length rule, size): kind n/z = BCD digits, an = ASCII, b = bytes;
# rule "fix" = fixed size, "ll" = 1 BCD byte length, "lll" = 2 BCD bytes length.
# Sizes: digits for n/z, bytes for an/b (DESIGN §1 "Packing as real CUP terminals do it").
FIELDS: dict[int, tuple[str, str, int]] = {
    2: ("n", "ll", 19), 3: ("n", "fix", 6), 4: ("n", "fix", 12), 11: ("n", "fix", 6),
    12: ("n", "fix", 6), 13: ("n", "fix", 4), 14: ("n", "fix", 4), 22: ("n", "fix", 4),
    23: ("n", "fix", 3), 25: ("n", "fix", 2), 26: ("n", "fix", 2), 32: ("n", "ll", 11),
    35: ("z", "ll", 37), 36: ("z", "lll", 104), 37: ("an", "fix", 12), 38: ("an", "fix", 6),
    39: ("an", "fix", 2), 41: ("an", "fix", 8), 42: ("an", "fix", 15), 44: ("an", "ll", 25),
    48: ("n", "lll", 322), 49: ("an", "fix", 3), 52: ("b", "fix", 8), 53: ("n", "fix", 16),
    54: ("an", "lll", 20), 55: ("b", "lll", 255), 58: ("an", "lll", 100), 60: ("n", "lll", 17),
    61: ("n", "lll", 29), 62: ("b", "lll", 512), 63: ("an", "lll", 163), 64: ("b", "fix", 8),
}
VARIABLE_NUMERIC_LEFT = {2, 32, 35, 48, 60, 61}  # left-aligned, right-padded with a 0 nibble
KEY_BLOCK_LEN = {"001": 24, "003": 40, "004": 60}


class RefError(AssertionError):
    """The bytes break a rule of DESIGN §1."""


@dataclass
class Frame:
    tpdu: bytes
    header: bytes
    mti: str
    fields: dict[int, str | bytes]

    def text(self, n: int) -> str:
        v = self.fields[n]
        assert isinstance(v, str), f"field {n} is binary"
        return v

    def binary(self, n: int) -> bytes:
        v = self.fields[n]
        assert isinstance(v, bytes), f"field {n} is not binary"
        return v


# --- primitives -----------------------------------------------------------------------------

def _bcd_to_digits(data: bytes) -> str:
    s = data.hex()
    if not s.isdigit():
        raise RefError(f"not BCD: {s}")
    return s


def _bcd_int(data: bytes) -> int:
    return int(_bcd_to_digits(data))


def _pack_digits(digits: str, left_aligned: bool) -> bytes:
    if not digits.isdigit():
        raise ValueError(f"not digits: {digits!r}")
    if len(digits) % 2:
        digits = digits + "0" if left_aligned else "0" + digits
    return bytes.fromhex(digits)


def tdes_ecb(key: bytes, data: bytes, decrypt: bool = False) -> bytes:
    """TDES-ECB with a 8/16/24-byte key (8 = single DES, expanded to K|K|K)."""
    if len(key) == 8:
        key = key * 3
    elif len(key) == 16:
        key = key + key[:8]
    c = Cipher(TripleDES(key), modes.ECB())
    op = c.decryptor() if decrypt else c.encryptor()
    return op.update(data) + op.finalize()


def kcv(key: bytes) -> bytes:
    """First 4 bytes of encrypting 8 zero bytes with the clear key."""
    return tdes_ecb(key, bytes(8))[:4]


def cup_mac(mak8: bytes, data: bytes) -> bytes:
    """CUP "ECB" MAC: XOR blocks, hex expand, DES, XOR, DES, first 8 hex chars (ASCII)."""
    data = data + bytes(-len(data) % 8)
    acc = bytes(8)
    for i in range(0, len(data), 8):
        acc = bytes(a ^ b for a, b in zip(acc, data[i:i + 8], strict=True))
    hx = acc.hex().upper().encode()
    step = tdes_ecb(mak8, hx[:8])
    step = tdes_ecb(mak8, bytes(a ^ b for a, b in zip(step, hx[8:], strict=True)))
    return step.hex().upper().encode()[:8]


# --- decoding -------------------------------------------------------------------------------

def parse_frame(data: bytes, *, reply: bool = True) -> Frame:
    """Parse ``LEN | TPDU | header | MTI | bitmap | fields``; ``reply`` applies reply rules."""
    if len(data) < 2:
        raise RefError("no length prefix")
    length = int.from_bytes(data[:2], "big")
    body = data[2:]
    if length != len(body):
        raise RefError(f"length prefix {length} != body {len(body)}")
    if len(body) < 21:
        raise RefError(f"body of {len(body)} bytes is shorter than TPDU+header+MTI+bitmap")
    tpdu, header = body[:5], body[5:11]
    mti = _bcd_to_digits(body[11:13])
    bitmap = int.from_bytes(body[13:21], "big")
    if bitmap >> 63:
        raise RefError("secondary bitmap present (terminals reject it)")
    present = [n for n in range(2, 65) if bitmap >> (64 - n) & 1]
    pos = 21
    fields: dict[int, str | bytes] = {}
    for n in present:
        if n not in FIELDS:
            raise RefError(f"field {n} outside the set CUP terminals accept")
        kind, rule, size = FIELDS[n]
        if rule == "fix":
            count = size
        else:
            nlen = 1 if rule == "ll" else 2
            count = _bcd_int(body[pos:pos + nlen])
            pos += nlen
            if count > size:
                raise RefError(f"field {n}: length {count} > max {size}")
        nbytes = (count + 1) // 2 if kind in ("n", "z") else count
        raw = body[pos:pos + nbytes]
        if len(raw) != nbytes:
            raise RefError(f"field {n}: truncated")
        pos += nbytes
        if kind in ("n", "z"):
            digits = raw.hex().upper()
            if count % 2:
                left = n in VARIABLE_NUMERIC_LEFT
                pad, digits = (digits[-1], digits[:-1]) if left else (digits[0], digits[1:])
                if pad != "0":
                    raise RefError(f"field {n}: pad nibble {pad} is not 0")
            if kind == "n" and not digits.isdigit():
                raise RefError(f"field {n}: not BCD")
            fields[n] = digits
        elif kind == "an":
            fields[n] = raw.decode("ascii")
        else:
            fields[n] = raw
    if pos != len(body):
        raise RefError(f"{len(body) - pos} trailing bytes")
    if reply and 63 in fields and len(fields[63]) > 63:
        raise RefError("field 63 over 63 bytes")
    return Frame(tpdu, header, mti, fields)


# --- encoding (requests) --------------------------------------------------------------------

def encode_frame(tpdu: bytes, header: bytes, mti: str, fields: dict[int, str | bytes],
                 mak8: bytes | None = None) -> bytes:
    """Hand-written CUP encoder; with ``mak8`` sets bit 64 and appends the CUP MAC."""
    nums = sorted(fields) + ([64] if mak8 is not None else [])
    bitmap = 0
    for n in nums:
        bitmap |= 1 << (64 - n)
    out = bytearray(_pack_digits(mti, False) + bitmap.to_bytes(8, "big"))
    for n in sorted(fields):
        kind, rule, size = FIELDS[n]
        v = fields[n]
        if kind in ("n", "z"):
            assert isinstance(v, str)
            if rule == "fix":
                assert len(v) == size, (n, v)
                packed = _pack_digits(v, left_aligned=False)
            else:
                packed = _pack_digits(v, left_aligned=n in VARIABLE_NUMERIC_LEFT)
            count = len(v)
        else:
            packed = v.encode("ascii") if isinstance(v, str) else v
            if rule == "fix":
                packed = packed.ljust(size, b" ")[:size]
            count = len(packed)
        if rule == "ll":
            out += _pack_digits(f"{count:02d}", False)
        elif rule == "lll":
            out += _pack_digits(f"{count:04d}", False)
        out += packed
    if mak8 is not None:
        out += cup_mac(mak8, bytes(out))
    body = tpdu + header + bytes(out)
    return len(body).to_bytes(2, "big") + body


def signon_0800(*, stan: str, terminal_id: str, merchant_id: str, key_mode: str,
                batch: str = "000001", operator: str = "01 ",
                tpdu: bytes = bytes.fromhex("6000030000"),
                header: bytes = bytes.fromhex("603100310000"),
                serial: str | None = None) -> bytes:
    fields: dict[int, str | bytes] = {11: stan, 41: terminal_id, 42: merchant_id,
                                      60: f"00{batch}{key_mode}", 63: operator}
    if serial is not None:
        fields[62] = serial.encode("ascii")
    return encode_frame(tpdu, header, "0800", fields)


def network_08x0(*, mti: str, stan: str, terminal_id: str, merchant_id: str, code: str,
                 batch: str = "000001", tpdu: bytes = bytes.fromhex("6000030000"),
                 header: bytes = bytes.fromhex("603100310000")) -> bytes:
    """Echo (301) / sign-off (002) style network request."""
    return encode_frame(tpdu, header, mti, {11: stan, 41: terminal_id, 42: merchant_id,
                                           60: f"00{batch}{code}"})


# --- field 62 -------------------------------------------------------------------------------

@dataclass
class KeyBlock:
    pik: bytes
    mak: bytes
    tdk: bytes | None


def decode_keys(tmk: bytes, block: bytes, key_mode: str) -> KeyBlock:
    """Decrypt field 62 under the TMK and check every KCV (MAK: single DES of MAK[:8])."""
    if len(block) != KEY_BLOCK_LEN[key_mode]:
        raise RefError(f"field 62 is {len(block)} bytes, key mode {key_mode} needs "
                       f"{KEY_BLOCK_LEN[key_mode]}")
    klen = 8 if key_mode == "001" else 16
    parts, pos = [], 0
    for _ in range(2 if key_mode != "004" else 3):
        enc, check = block[pos:pos + klen], block[pos + klen:pos + klen + 4]
        pos += klen + 4
        parts.append((tdes_ecb(tmk, enc, decrypt=True), check))
    (pik, pik_kcv), (mak, mak_kcv) = parts[0], parts[1]
    if kcv(pik) != pik_kcv:
        raise RefError("PIK KCV mismatch")
    if kcv(mak[:8]) != mak_kcv:
        raise RefError("MAK KCV mismatch (expected single DES of MAK[:8])")
    tdk = None
    if key_mode == "004":
        tdk, tdk_kcv = parts[2]
        if kcv(tdk) != tdk_kcv:
            raise RefError("TDK KCV mismatch")
    return KeyBlock(pik, mak, tdk)
