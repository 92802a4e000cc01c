"""PCI DSS redaction: mask PANs (first 6 / last 4), drop track data, PIN blocks and keys.

The one redaction layer of the rig: used on every event, log line (:mod:`rig.core.logredact`),
exception text, report and export, and by ``rig audit`` to look for what should not be there.
Test cards are treated exactly like real ones, so a real card used by mistake cannot leak.

What it recognises (:func:`redact_text`, :func:`scan_text`):

- PANs: 13–19 digits, contiguous or in groups of 3+ digits separated by one space or dash
  (``6222 0212 3456 7890 123``, ``4761-7390-0101-0010``), *Luhn-checked*, so ordinary long
  numbers survive; a PAN never starts with 0. Numbers shaped like epoch timestamps (13, 16 or
  19 contiguous digits starting with 1: ms / µs / ns since 1970), numbers labelled as times
  (``mono_ns=...``, ``"tx_ns": ...``) and the fraction or integer part of a decimal
  (``13.608026720999987``) are left alone.
- Track 2 (``;PAN=YYMM...?`` and the ``PAN D YYMM...`` form of tag 57): PAN masked, the rest
  (expiry, service code, discretionary data) dropped.
- Track 1 (``%B PAN ^NAME^ YYMM...?``): PAN and name masked, the rest dropped.
- EMV TLV in hex dumps (contiguous or byte-spaced): the values of 5A (PAN), 57 (track 2
  equivalent), 5F20 (cardholder name), 9F1F / 9F20 (track 1 / 2 discretionary data).
- PIN blocks (``pin_block=``, ``field 52:``, ``PIN block`` + 16 hex), clear PINs after a
  ``pin`` label, keys (16 / 32 / 48 hex after a tmk / tpk / tak / zmk / ... / key label) and
  passwords after a password label.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass

# ISO 8583 fields that must never be stored: 35/36 track 2/3, 45 track 1, 52 PIN block,
# 53 security info, 55 ICC data (cryptograms), 62 (CUP working keys), 64/128 MAC.
SECRET_FIELDS = frozenset({"35", "36", "45", "52", "53", "55", "62", "64", "128"})
PAN_FIELDS = frozenset({"2"})

# EMV tags whose values are cardholder data: PAN, track 2 equivalent, cardholder name,
# track 1 / track 2 discretionary data.
EMV_SECRET_TAGS = frozenset({"5A", "57", "5F20", "9F1F", "9F20"})


def luhn_ok(digits: str) -> bool:
    """The Luhn (mod 10) check of a string of digits."""
    total = 0
    for i, ch in enumerate(reversed(digits)):
        d = ord(ch) - 48
        if i % 2:
            d = d * 2 - 9 if d > 4 else d * 2
        total += d
    return total % 10 == 0


def mask_pan(pan: str) -> str:
    """``6222021234567890123`` → ``622202*********0123``; short strings fully masked."""
    pan = pan.strip()
    if len(pan) < 13:
        return "*" * len(pan)
    return pan[:6] + "*" * (len(pan) - 10) + pan[-4:]


@dataclass(frozen=True)
class Finding:
    """Something :func:`scan_text` found: its kind, a masked sample, and where in the text."""

    kind: str  # pan | track1 | track2 | emv | pin_block | pin | key | password
    sample: str  # masked: safe to print
    start: int
    end: int


Sink = Callable[[str, str, int, int], None] | None

# --- track data -------------------------------------------------------------------------------
_TRACK1 = re.compile(r"%?[Bb](\d{12,19})\^([^^\n]{1,26})\^(\d{4})[^?\s\"',;}\]]*\??")
_TRACK2 = re.compile(r";?(\d{12,19})(?:=|[Dd](?=\d{4}))\d{4}[0-9A-Fa-f?]*")
_TRACK2_TEXT = re.compile(r";?(\d{12,19})(?:=|[Dd](?=\d{4}))\d{4}\d*\??(?![0-9A-Fa-f])")

# --- PIN blocks, PINs, keys, passwords ------------------------------------------------------------
_Q = r"""["']?\s*[:=]?\s*["']?"""  # label ... value, JSON or key=value or "label: value"
_PIN_BLOCK = re.compile(
    r"(?i)((?:\bpin[ _-]?block|\bpinblk|\bepb|\bf(?:ield)?[ _.-]?52|\bde[ _]?52|\bbit[ _]?52|"
    r"[\"']52[\"'])" + _Q + r")([0-9A-F]{16})(?![0-9A-F])")
_PIN = re.compile(r"(?i)(\b(?:pin|clear_pin|pin_code)[\"']?\s*[:=]\s*[\"']?)(\d{4,12})(?!\d)")
_KEY_WORDS = r"tmk|tpk|tak|tdk|zmk|zpk|zak|kek|mak|pik|bdk|ipek|key"
_KEY = re.compile(
    r"(?i)(\b\w*(?:" + _KEY_WORDS + r")\w*" + _Q + r")"
    r"((?:[0-9A-F]{48}|[0-9A-F]{32}|[0-9A-F]{16}))(?![0-9A-F])")
_PASSWORD = re.compile(
    r"(?i)(\b\w*(?:password|passwd|passphrase|pwd)\w*[\"']?\s*[:=]\s*[\"']?)"
    r"(?!\*{4})([^\s\"',;}\]]+)")

# --- EMV TLV in hex dumps ---------------------------------------------------------------------------
_HEX_RUN = re.compile(r"(?<![0-9A-Fa-f])[0-9A-Fa-f]{6,}(?![0-9A-Fa-f])")
_HEX_SPACED = re.compile(r"(?<![0-9A-Fa-f])[0-9A-Fa-f]{2}(?:[ :][0-9A-Fa-f]{2}){2,}(?![0-9A-Fa-f])")

# --- PANs ---------------------------------------------------------------------------------------
_DIGIT_RUN = re.compile(r"(?<!\d)\d+(?:[ \-]\d+)*(?!\d)")
_TIME_LABEL = re.compile(
    r"(?i)(?:ns|us|ms|_s|ts|time|stamp|epoch|mono|wall|offset|elapsed|duration|seq|stan|"
    r"bytes|size)[\"']?\s*[:=]\s*[\"']?$")


def _redact_tlv(tokens: list[tuple[int, int]], text: str, out: list[str], sink: Sink) -> None:
    """Try every byte offset of a hex dump: the value bytes of every secret EMV tag (with a
    length that fits) are replaced by ``**`` in ``out`` (a per-character list)."""
    b = [text[s:e].upper() for s, e in tokens]
    n, i, covered = len(b), 0, 0
    while i < n:
        tag = b[i]
        tlen = 1
        if tag in ("5F", "9F") and i + 1 < n:
            tag, tlen = tag + b[i + 1], 2
        if tag in EMV_SECRET_TAGS and i + tlen < n:
            j = i + tlen
            ln, llen = int(b[j], 16), 1
            if ln == 0x81 and j + 1 < n:
                ln, llen = int(b[j + 1], 16), 2
            start = j + llen
            if 0 < ln < 0x80 or llen == 2:
                end = start + ln
                if 0 < ln and end <= n:
                    value = "".join(b[start:end])
                    for k in range(start, end):
                        s, e = tokens[k]
                        for c in range(s, e):
                            out[c] = "*"
                    if sink is not None and i >= covered:
                        sample = mask_pan(value.rstrip("F")) if tag == "5A" else f"<{ln} bytes>"
                        sink("emv", f"tag {tag}: {sample}", tokens[i][0], tokens[end - 1][1])
                    covered = max(covered, end)
        # one byte on, not past the value: a tag-like byte inside another tag's value must not
        # hide the real tag after it (over-redacting a dump is harmless, missing a PAN is not)
        i += 1


def _emv(text: str, sink: Sink) -> str:
    if not any(t in text.upper() for t in ("5A", "57", "5F20", "9F1F", "9F20")):
        return text
    out: list[str] | None = None
    for rx in (_HEX_RUN, _HEX_SPACED):
        for m in rx.finditer(text):
            run = m.group(0)
            if not any(c in "ABCDEFabcdef" for c in run):
                continue  # all digits: a number, not a dump (57's value has its D separator)
            if rx is _HEX_RUN:
                tokens = [(m.start() + k, m.start() + k + 2) for k in range(0, len(run) - 1, 2)]
            else:
                tokens = [(m.start() + k, m.start() + k + 2) for k in range(0, len(run), 3)]
            if out is None:
                out = list(text)
            _redact_tlv(tokens, text, out, sink)
    return text if out is None else "".join(out)


def _pan_windows(run: str, base: int, text: str) -> list[tuple[int, int, str]]:
    """PANs inside one run of digit groups: (start, end, digits) spans, leftmost-longest."""
    groups = [(m.start(), m.end()) for m in re.finditer(r"\d+", run)]
    found: list[tuple[int, int, str]] = []
    i = 0
    while i < len(groups):
        best = None
        digits = ""
        for j in range(i, len(groups)):
            g = run[groups[j][0]:groups[j][1]]
            if j > i and (len(g) < 3 or groups[i][1] - groups[i][0] < 3):
                break  # spaced PANs come in groups of 3+ digits
            digits += g
            if len(digits) > 19:
                break
            if len(digits) >= 13 and digits[0] != "0" and luhn_ok(digits):
                best = (j, digits)
        if best is None:
            i += 1
            continue
        j, digits = best
        s, e = base + groups[i][0], base + groups[j][1]
        single = i == j
        timestamp = single and digits[0] == "1" and len(digits) in (13, 16, 19)
        labelled = _TIME_LABEL.search(text[max(0, s - 24):s]) is not None
        decimal = (text[s - 2:s - 1].isdigit() and text[s - 1:s] == ".") or (
            text[e:e + 1] == "." and text[e + 1:e + 2].isdigit())  # 13.608026720999987
        if not (timestamp or labelled or decimal):
            found.append((s, e, digits))
        i = j + 1
    return found


def _pans(text: str, sink: Sink) -> str:
    spans: list[tuple[int, int, str]] = []
    for m in _DIGIT_RUN.finditer(text):
        if m.end() - m.start() >= 13:
            spans += _pan_windows(m.group(0), m.start(), text)
    if not spans:
        return text
    out, last = [], 0
    for s, e, digits in spans:
        masked = iter(mask_pan(digits))
        seg = "".join(next(masked) if c.isdigit() else c for c in text[s:e])
        out += [text[last:s], seg]
        last = e
        if sink is not None:
            sink("pan", mask_pan(digits), s, e)
    out.append(text[last:])
    return "".join(out)


def _sub(rx: re.Pattern[str], kind: str, repl: Callable[[re.Match[str]], tuple[str, str]],
         text: str, sink: Sink) -> str:
    def f(m: re.Match[str]) -> str:
        new, sample = repl(m)
        if sink is not None:
            sink(kind, sample, m.start(), m.end())
        return new

    return rx.sub(f, text)


def _track1(m: re.Match[str]) -> tuple[str, str]:
    masked = mask_pan(m.group(1))
    return f"B{masked}^****^<track1>", f"B{masked}^****^"


def _track2(m: re.Match[str]) -> tuple[str, str]:
    masked = mask_pan(m.group(1))
    return f"{masked}=<track2>", f"{masked}=..."


def _redact(text: str, sink: Sink = None) -> str:
    if not text:
        return text
    # a track 2 as text (digits to its end) first: it is also a run of hex digits, where the TLV
    # pass would find tag-like bytes ('...57 01 00 4D...') and mask a byte of the PAN, hiding
    # the track from its pattern; a track 2 inside a hex dump (tag 57) is the TLV pass's
    text = _sub(_TRACK2_TEXT, "track2", _track2, text, sink)
    text = _emv(text, sink)
    text = _sub(_TRACK1, "track1", _track1, text, sink)
    text = _sub(_TRACK2, "track2", _track2, text, sink)
    text = _sub(_PIN_BLOCK, "pin_block", lambda m: (m.group(1) + "<pin block>", "<16 hex>"),
                text, sink)
    text = _sub(_PIN, "pin", lambda m: (m.group(1) + "****", f"<{len(m.group(2))} digits>"),
                text, sink)
    text = _sub(_KEY, "key", lambda m: (m.group(1) + "<key>", f"<{len(m.group(2))} hex>"),
                text, sink)
    text = _sub(_PASSWORD, "password", lambda m: (m.group(1) + "****", "****"), text, sink)
    return _pans(text, sink)


def redact_text(text: str) -> str:
    """``text`` with PANs masked and track data, EMV card data, PIN blocks, keys and
    passwords removed (see the module doc for what is recognised)."""
    return _redact(text)


def scan_text(text: str) -> list[Finding]:
    """What :func:`redact_text` would remove or mask, in order of detection (samples masked).
    Positions are those of the text as each detector saw it (approximate after an earlier
    replacement on the same line)."""
    found: list[Finding] = []
    _redact(text, lambda kind, sample, s, e: found.append(Finding(kind, sample, s, e)))
    return found


def redact_obj(obj: object) -> object:
    """A copy of JSON-like data with every string redacted (dict keys kept)."""
    if isinstance(obj, str):
        return redact_text(obj)
    if isinstance(obj, Mapping):
        return {k: redact_obj(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [redact_obj(v) for v in obj]
    return obj


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
