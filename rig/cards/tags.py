"""The EMV data objects the rig's cards and kernel know: name, who supplies them, format.

From EMV 4.4 Book 3 Annex A (data elements dictionary) and the brands' public tag lists
(EMV Contactless Books C-2 Mastercard, C-3 Visa, C-7 UnionPay). ``source`` says who supplies
the value: ``terminal`` (the kernel fills it into a PDOL / CDOL), ``icc`` (the card holds it
in its FCI, records or responses), ``issuer`` (the host's reply). A DOL may only name tags a
terminal can fill: terminal data, issuer data (CDOL2: ARC, issuer authentication data), or
the few card data a terminal holds after offline data authentication (``terminal_fills``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

Source = Literal["terminal", "icc", "issuer"]
Format = Literal["n", "cn", "b", "an", "ans"]


@dataclass(frozen=True, slots=True)
class Tag:
    tag: int
    name: str
    source: Source
    fmt: Format
    length: int | tuple[int, int]  # bytes: fixed, or (min, max)
    terminal_fills: bool = False  # an ICC tag a terminal may be asked for in a DOL (zeros if unknown)

    @property
    def hex(self) -> str:
        return f"{self.tag:X}"

    def fits(self, n: int) -> bool:
        lo, hi = (self.length, self.length) if isinstance(self.length, int) else self.length
        return lo <= n <= hi


_T = Tag
TAGS: dict[int, Tag] = {t.tag: t for t in (
    # --- terminal data (Book 3 Table 33 and the contactless books)
    _T(0x9F02, "Amount, Authorised", "terminal", "n", 6),
    _T(0x9F03, "Amount, Other", "terminal", "n", 6),
    _T(0x9F1A, "Terminal Country Code", "terminal", "n", 2),
    _T(0x95, "Terminal Verification Results", "terminal", "b", 5),
    _T(0x5F2A, "Transaction Currency Code", "terminal", "n", 2),
    _T(0x5F36, "Transaction Currency Exponent", "terminal", "n", 1),
    _T(0x9A, "Transaction Date", "terminal", "n", 3),
    _T(0x9C, "Transaction Type", "terminal", "n", 1),
    _T(0x9F21, "Transaction Time", "terminal", "n", 3),
    _T(0x9F37, "Unpredictable Number", "terminal", "b", 4),
    _T(0x9F35, "Terminal Type", "terminal", "n", 1),
    _T(0x9F33, "Terminal Capabilities", "terminal", "b", 3),
    _T(0x9F40, "Additional Terminal Capabilities", "terminal", "b", 5),
    _T(0x9F34, "CVM Results", "terminal", "b", 3),
    _T(0x9F66, "Terminal Transaction Qualifiers", "terminal", "b", 4),
    _T(0x9F09, "Application Version Number (terminal)", "terminal", "b", 2),
    _T(0x9F1E, "Interface Device Serial Number", "terminal", "an", 8),
    _T(0x9F1C, "Terminal Identification", "terminal", "an", 8),
    _T(0x9F16, "Merchant Identifier", "terminal", "ans", 15),
    _T(0x9F15, "Merchant Category Code", "terminal", "n", 2),
    _T(0x9F01, "Acquirer Identifier", "terminal", "n", 6),
    _T(0x9F4E, "Merchant Name and Location", "terminal", "ans", (1, 40)),
    _T(0x9F41, "Transaction Sequence Counter", "terminal", "n", (2, 4)),
    _T(0x9F53, "Transaction Category Code", "terminal", "an", 1),
    _T(0x9F7C, "Merchant Custom Data", "terminal", "b", 20),
    _T(0x9F7A, "Electronic Cash Terminal Support Indicator", "terminal", "b", 1),
    _T(0xDF60, "CAPP Transaction Indicator (UnionPay)", "terminal", "b", 1),
    _T(0xDF69, "SM Algorithm Supported Indicator (UnionPay)", "terminal", "b", 1),
    _T(0x98, "Transaction Certificate Hash Value", "terminal", "b", 20),
    # --- issuer data a terminal passes on in CDOL2
    _T(0x8A, "Authorisation Response Code", "issuer", "an", 2),
    _T(0x91, "Issuer Authentication Data", "issuer", "b", (8, 16)),
    # --- card data (FCI, records, GPO and GENERATE AC responses)
    _T(0x4F, "Application Identifier (card)", "icc", "b", (5, 16)),
    _T(0x50, "Application Label", "icc", "ans", (1, 16)),
    _T(0x57, "Track 2 Equivalent Data", "icc", "b", (1, 19)),
    _T(0x5A, "Application PAN", "icc", "cn", (1, 10)),
    _T(0x5F20, "Cardholder Name", "icc", "ans", (2, 26)),
    _T(0x5F24, "Application Expiration Date", "icc", "n", 3),
    _T(0x5F25, "Application Effective Date", "icc", "n", 3),
    _T(0x5F28, "Issuer Country Code", "icc", "n", 2),
    _T(0x5F2D, "Language Preference", "icc", "an", (2, 8)),
    _T(0x5F30, "Service Code", "icc", "n", 2),
    _T(0x5F34, "PAN Sequence Number", "icc", "n", 1),
    _T(0x82, "Application Interchange Profile", "icc", "b", 2),
    _T(0x84, "Dedicated File Name", "icc", "b", (5, 16)),
    _T(0x87, "Application Priority Indicator", "icc", "b", 1),
    _T(0x88, "Short File Identifier", "icc", "b", 1),
    _T(0x8C, "CDOL1", "icc", "b", (0, 252)),
    _T(0x8D, "CDOL2", "icc", "b", (0, 252)),
    _T(0x8E, "CVM List", "icc", "b", (10, 252)),
    _T(0x94, "Application File Locator", "icc", "b", (4, 252)),
    _T(0x9F07, "Application Usage Control", "icc", "b", 2),
    _T(0x9F08, "Application Version Number (card)", "icc", "b", 2),
    _T(0x9F0D, "Issuer Action Code - Default", "icc", "b", 5),
    _T(0x9F0E, "Issuer Action Code - Denial", "icc", "b", 5),
    _T(0x9F0F, "Issuer Action Code - Online", "icc", "b", 5),
    _T(0x9F10, "Issuer Application Data", "icc", "b", (1, 32)),
    _T(0x9F11, "Issuer Code Table Index", "icc", "n", 1),
    _T(0x9F12, "Application Preferred Name", "icc", "ans", (1, 16)),
    _T(0x9F13, "Last Online ATC Register", "icc", "b", 2),
    _T(0x9F14, "Lower Consecutive Offline Limit", "icc", "b", 1),
    _T(0x9F17, "PIN Try Counter", "icc", "b", 1),
    _T(0x9F1F, "Track 1 Discretionary Data", "icc", "ans", (0, 54)),
    _T(0x9F23, "Upper Consecutive Offline Limit", "icc", "b", 1),
    _T(0x9F26, "Application Cryptogram", "icc", "b", 8),
    _T(0x9F27, "Cryptogram Information Data", "icc", "b", 1),
    _T(0x9F36, "Application Transaction Counter", "icc", "b", 2),
    _T(0x9F38, "PDOL", "icc", "b", (0, 252)),
    _T(0x9F42, "Application Currency Code", "icc", "n", 2),
    _T(0x9F44, "Application Currency Exponent", "icc", "n", 1),
    _T(0x9F4D, "Log Entry", "icc", "b", 2),
    _T(0x9F45, "Data Authentication Code", "icc", "b", 2, terminal_fills=True),
    _T(0x9F4C, "ICC Dynamic Number", "icc", "b", (2, 8), terminal_fills=True),
    _T(0x9F6E, "Form Factor Indicator / Third Party Data", "icc", "b", (4, 32)),
    _T(0xBF0C, "FCI Issuer Discretionary Data", "icc", "b", (0, 222)),
)}

# Book 2 §8.1.1 Table 28: the terminal data an application cryptogram must cover, in order,
# with the length the issuer expects; a card's CDOL1 must ask for each at that length.
CRYPTOGRAM_TERMINAL_DATA: tuple[tuple[int, int], ...] = (
    (0x9F02, 6), (0x9F03, 6), (0x9F1A, 2), (0x95, 5), (0x5F2A, 2), (0x9A, 3), (0x9C, 1),
    (0x9F37, 4))

NUMERIC = frozenset(t.tag for t in TAGS.values() if t.fmt == "n")


def name(tag: int) -> str:
    t = TAGS.get(tag)
    return t.name if t else "unknown"


def dol_fillable(tag: int) -> bool:
    """A terminal can supply ``tag`` when a DOL asks for it."""
    t = TAGS.get(tag)
    return t is not None and (t.source in ("terminal", "issuer") or t.terminal_fills)
