"""BER-TLV as EMV uses it (EMV Book 3 Annex B): multi-byte tags, constructed tags,
long-form lengths, and DOLs (tag + length lists such as PDOL and CDOL1).

Strict: truncated data, indefinite lengths, lengths over 4 bytes, bad tag continuation or
nesting deeper than :data:`MAX_DEPTH` raise :class:`TlvError`. Error texts name offsets and
tags only, never values (values may hold a PAN or track 2).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from ..core.errors import ProtocolError

MAX_DEPTH = 16
MAX_DOL_DATA = 252  # DOL data travels in one short APDU (Lc <= 255, minus the 83 wrapper)

# Tags whose format is n (BCD numeric): DOL fitting keeps their rightmost bytes and pads left.
NUMERIC_TAGS = frozenset(
    {0x9F02, 0x9F03, 0x5F2A, 0x5F36, 0x9A, 0x9C, 0x9F1A, 0x9F21, 0x9F41, 0x9F3C, 0x9F3D,
     0x9F35, 0x9F15, 0x9F01}
)


class TlvError(ProtocolError):
    """Bytes that are not well-formed BER-TLV."""


@dataclass(frozen=True, slots=True)
class Tlv:
    """One data object; ``children`` is filled for constructed tags."""

    tag: int
    value: bytes
    children: tuple[Tlv, ...] = ()

    @property
    def constructed(self) -> bool:
        return is_constructed(self.tag)

    def __repr__(self) -> str:  # values may be a PAN or track 2: show tag and length only
        return f"Tlv({tag_hex(self.tag)}, {len(self.value)} bytes)"


def tag_hex(tag: int) -> str:
    return f"{tag:X}".zfill(len(tag_bytes(tag)) * 2)


def is_constructed(tag: int) -> bool:
    return bool(tag_bytes(tag)[0] & 0x20)


def tag_bytes(tag: int) -> bytes:
    """The encoded form of ``tag``; raises :class:`TlvError` if it is not a valid BER tag."""
    if tag <= 0:
        raise TlvError(f"invalid tag {tag}")
    raw = tag.to_bytes((tag.bit_length() + 7) // 8, "big")
    if len(raw) > 4:
        raise TlvError(f"tag {tag:X} longer than 4 bytes")
    multi = raw[0] & 0x1F == 0x1F
    if multi != (len(raw) > 1):
        raise TlvError(f"invalid tag {tag:X}")
    if any(not b & 0x80 for b in raw[1:-1]) or (len(raw) > 1 and raw[-1] & 0x80):
        raise TlvError(f"invalid tag {tag:X}: bad continuation bits")
    return raw


def _read_tag(data: bytes, i: int) -> tuple[int, int]:
    start = i
    if i >= len(data):
        raise TlvError(f"truncated tag at offset {i}")
    if data[i] == 0x00:
        raise TlvError(f"tag 00 at offset {i} (padding is not allowed here)")
    i += 1
    if data[start] & 0x1F == 0x1F:
        while True:
            if i >= len(data):
                raise TlvError(f"truncated tag at offset {start}")
            b = data[i]
            i += 1
            if i - start > 4:
                raise TlvError(f"tag longer than 4 bytes at offset {start}")
            if not b & 0x80:
                break
    return int.from_bytes(data[start:i], "big"), i


def _read_length(data: bytes, i: int) -> tuple[int, int]:
    if i >= len(data):
        raise TlvError(f"missing length at offset {i}")
    first = data[i]
    i += 1
    if first < 0x80:
        return first, i
    n = first & 0x7F
    if n == 0:
        raise TlvError(f"indefinite length at offset {i - 1} is not allowed")
    if n > 4:
        raise TlvError(f"length field of {n} bytes at offset {i - 1}")
    if i + n > len(data):
        raise TlvError(f"truncated length at offset {i - 1}")
    return int.from_bytes(data[i : i + n], "big"), i + n


def _parse(data: bytes, depth: int, skip_padding: bool) -> list[Tlv]:
    if depth > MAX_DEPTH:
        raise TlvError(f"nested deeper than {MAX_DEPTH} levels")
    out: list[Tlv] = []
    i = 0
    while i < len(data):
        if skip_padding and data[i] in (0x00, 0xFF):
            i += 1
            continue
        at = i
        tag, i = _read_tag(data, i)
        length, i = _read_length(data, i)
        if i + length > len(data):
            raise TlvError(
                f"tag {tag_hex(tag)} at offset {at}: length {length} exceeds the "
                f"{len(data) - i} bytes left"
            )
        value = bytes(data[i : i + length])
        i += length
        children: tuple[Tlv, ...] = ()
        if data[at] & 0x20:
            try:
                children = tuple(_parse(value, depth + 1, skip_padding))
            except TlvError as e:
                raise TlvError(f"in {tag_hex(tag)} at offset {at}: {e}") from None
        out.append(Tlv(tag, value, children))
    return out


def parse(data: bytes, *, skip_padding: bool = False) -> list[Tlv]:
    """Every top-level object in ``data`` (constructed ones with their children).

    ``skip_padding`` ignores ``00``/``FF`` bytes between objects, as EMV allows in records.
    """
    return _parse(bytes(data), 0, skip_padding)


def walk(items: Iterable[Tlv]) -> Iterable[Tlv]:
    """Every object and its descendants, depth first."""
    for t in items:
        yield t
        yield from walk(t.children)


def find(data: bytes | Iterable[Tlv], tag: int) -> bytes | None:
    """The value of the first ``tag`` anywhere in ``data`` (depth first), or None."""
    items = parse(data) if isinstance(data, bytes | bytearray) else data
    return next((t.value for t in walk(items) if t.tag == tag), None)


def flatten(items: Iterable[Tlv]) -> dict[int, bytes]:
    """Every object, depth first, by tag; the first occurrence of a tag wins."""
    out: dict[int, bytes] = {}
    for t in walk(items):
        out.setdefault(t.tag, t.value)
    return out


def encode_length(n: int) -> bytes:
    if n < 0 or n > 0xFFFFFFFF:
        raise TlvError(f"length {n} out of range")
    if n < 0x80:
        return bytes([n])
    raw = n.to_bytes((n.bit_length() + 7) // 8, "big")
    return bytes([0x80 | len(raw)]) + raw


def encode(tag: int, value: bytes) -> bytes:
    """One object: tag, minimal length, value."""
    return tag_bytes(tag) + encode_length(len(value)) + bytes(value)


def encode_many(items: Iterable[tuple[int, bytes]]) -> bytes:
    return b"".join(encode(t, v) for t, v in items)


def parse_dol(dol: bytes) -> list[tuple[int, int]]:
    """A data object list (PDOL, CDOL1…): ``[(tag, length), …]``. The data it asks for must
    fit one short APDU (:data:`MAX_DOL_DATA` bytes)."""
    out: list[tuple[int, int]] = []
    i = total = 0
    while i < len(dol):
        tag, i = _read_tag(dol, i)
        length, i = _read_length(dol, i)
        total += length
        if total > MAX_DOL_DATA:
            raise TlvError(f"DOL asks for more than {MAX_DOL_DATA} bytes")
        out.append((tag, length))
    return out


def dol_items(dol: bytes | list[tuple[int, int]],
              values: Mapping[int, bytes]) -> list[tuple[int, bytes]]:
    """``(tag, value)`` per DOL entry, each value fitted as EMV Book 3 §5.4 says: numeric tags
    keep their rightmost bytes / pad with leading zeros, others keep the leftmost / pad with
    trailing zeros; a tag without a value is zeros."""
    entries = parse_dol(dol) if isinstance(dol, bytes | bytearray) else dol
    out: list[tuple[int, bytes]] = []
    for tag, length in entries:
        v = values.get(tag, b"")
        if tag in NUMERIC_TAGS:
            v = v[-length:] if len(v) >= length else bytes(length - len(v)) + v
        else:
            v = v[:length] + bytes(max(0, length - len(v)))
        out.append((tag, v[:length] if length else b""))
    return out


def build_dol(dol: bytes | list[tuple[int, int]], values: Mapping[int, bytes]) -> bytes:
    """The data a DOL asks for (see :func:`dol_items`), concatenated."""
    return b"".join(v for _, v in dol_items(dol, values))


def dol_length(dol: bytes) -> int:
    return sum(n for _, n in parse_dol(dol))
