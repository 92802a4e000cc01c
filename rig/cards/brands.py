"""How each brand's cards are commonly issued: the defaults a card profile starts from.

A profile (``configs/cards/*.yaml``) names its scheme; every EMV data object it does not set
comes from here. ``docs/cards.md`` gives the source of each default (EMV books, the brands'
public kernel books, personalisation data seen in public card traces) and where the rig's cards
knowingly differ from real ones (no offline data authentication: no AIP bit claims SDA, DDA or
CDA, because the cards carry no certificates to back it).

DOLs, AFLs and data are hex strings as EMV engineers write them (spaces allowed); records map
``"SFI.record"`` to the tags the record holds, in order.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Literal

Scheme = Literal["unionpay", "visa", "mastercard"]
Interface = Literal["contact", "contactless"]
INTERFACES: tuple[Interface, ...] = ("contact", "contactless")

# PC/SC part 3 pseudo-ATR of a contactless card without historical bytes (3B 80 80 01 + TCK)
CONTACTLESS_ATR = "3B80800101"


@dataclass(frozen=True)
class InterfaceDefaults:
    """The data objects a card shows on one interface."""

    aip: str
    afl: str
    pdol: str | None  # None: the FCI has no 9F38 and GPO takes only 83 00
    cdol1: str
    cdol2: str
    records: MappingProxyType[str, tuple[str, ...]]


def _iface(aip: str, afl: str, pdol: str | None, cdol1: str, cdol2: str,
           records: dict[str, tuple[str, ...]]) -> InterfaceDefaults:
    return InterfaceDefaults(aip, afl, pdol, cdol1, cdol2, MappingProxyType(records))


@dataclass(frozen=True)
class Brand:
    scheme: Scheme
    label: str  # 50 when a profile gives no app_label
    language: str  # 5F2D
    issuer_country: str  # 5F28 (n3)
    app_version: str  # 9F08
    cvm_list: str  # 8E
    iac_default: str  # 9F0D
    iac_denial: str  # 9F0E
    iac_online: str  # 9F0F
    iad: str  # 9F10 template as a first GENERATE AC (ARQC) returns it
    cvr_byte: int  # offset in 9F10 of the CVR byte holding the AC types
    arpc_method: int  # 1: ARPC || ARC, 2: ARPC || CSU (tag 91)
    contact_format: int  # GPO / GENERATE AC response template on contact: 1 (tag 80) or 2 (77)
    imk: str  # the rig issuer's test master key (AC) for this brand; never a production key
    contact: InterfaceDefaults
    contactless: InterfaceDefaults
    extra: MappingProxyType[str, str] = field(default_factory=lambda: MappingProxyType({}))

    def interface(self, name: Interface) -> InterfaceDefaults:
        return self.contact if name == "contact" else self.contactless


# Table 28 terminal data (every brand's CDOL1 starts with it)
_T28 = "9F0206 9F0306 9F1A02 9505 5F2A02 9A03 9C01 9F3704"

_CUP_RECORDS = {
    "1.1": ("57", "5F20", "9F1F"),
    "2.1": ("5A", "5F24", "5F25", "5F34", "9F07", "8E", "9F0D", "9F0E", "9F0F", "5F28", "8C", "8D"),
    "2.2": ("9F08", "5F30", "9F42", "9F44"),
}
_CUP_CL_RECORDS = {
    "1.1": ("57", "9F1F"),
    "2.1": ("5A", "5F24", "5F25", "5F34", "9F07", "9F0D", "9F0E", "9F0F", "5F28", "8C", "8D"),
    "2.2": ("9F08", "5F30", "9F42", "9F44"),
}
UNIONPAY = Brand(
    scheme="unionpay", label="UnionPay", language="zh", issuer_country="156", app_version="0030",
    cvm_list="0000000000000000 0203 1F00", iac_default="D86004A800",
    iac_denial="0010980000", iac_online="D86804F800",
    iad="07 01 01 03A00000 01", cvr_byte=4, arpc_method=1, contact_format=2,
    imk="1AF6FAFD45AF4BBE74615FA2A5A9374A",
    contact=_iface("1C00", "08010100 10010200", "9F7A01 9F0206 5F2A02",
                   _T28 + " 9F2103 9F4E14", "8A02 " + _T28 + " 9F2103", _CUP_RECORDS),
    contactless=_iface("1C00", "08010100 10010200",
                       "9F6604 9F0206 9F0306 9F1A02 9505 5F2A02 9A03 9C01 9F3704 DF6001",
                       _T28 + " 9F2103 9F4E14", "8A02 " + _T28 + " 9F2103", _CUP_CL_RECORDS),
)

_VISA_RECORDS = {
    "1.1": ("57", "5F20", "9F1F"),
    "2.1": ("5A", "5F24", "5F25", "5F34", "9F07", "8E", "9F0D", "9F0E", "9F0F", "5F28", "8C", "8D"),
    "2.2": ("9F08", "5F30", "9F42", "9F44"),
}
_VISA_CL_RECORDS = {
    "1.1": ("57", "5F20"),
    "2.1": ("5A", "5F24", "5F25", "5F34", "9F07", "9F0D", "9F0E", "9F0F", "5F28", "8C", "8D"),
    "2.2": ("9F08", "5F30", "9F42", "9F44"),
}
VISA = Brand(
    scheme="visa", label="VISA", language="en", issuer_country="840", app_version="008C",
    cvm_list="0000000000000000 1E03 0203 1F00", iac_default="F040008800",
    iac_denial="0010000000", iac_online="F040009800",
    iad="06 01 12 03A00000", cvr_byte=4, arpc_method=2, contact_format=1,
    imk="FAAFA7A3D5E7334E4119BED7DC9E435C",
    contact=_iface("1C00", "08010100 10010200", None, _T28, "8A02 " + _T28, _VISA_RECORDS),
    contactless=_iface("0000", "08010100 10010200",
                       "9F6604 9F0206 9F0306 9F1A02 9505 5F2A02 9A03 9C01 9F3704",
                       _T28, "8A02 " + _T28, _VISA_CL_RECORDS),
)

_MC_CDOL1 = _T28 + " 9F3501 9F4502 9F4C08 9F3403 9F2103 9F7C14"
_MC_CDOL2 = "910A 8A02 9505 9F3704 9F4C08"
_MC_RECORDS = {
    "1.1": ("57", "5F20", "9F1F"),
    "2.1": ("9F42", "5F25", "5F24", "5A", "5F34", "9F07", "9F08", "8C", "8D", "8E", "9F0D",
            "9F0E", "9F0F", "5F28"),
    "2.2": ("5F30", "9F44"),
}
MASTERCARD = Brand(
    scheme="mastercard", label="Mastercard", language="en", issuer_country="840",
    app_version="0002", cvm_list="0000000000000000 4203 1E03 1F03", iac_default="B450840000",
    iac_denial="0000000000", iac_online="B470848000",
    iad="01 10 A00000000000 0000 0000000000000000", cvr_byte=2, arpc_method=1,
    contact_format=2,
    imk="BEABD4BD04EC08DB0B6A39CEDBF79CA7",
    contact=_iface("1800", "08010100 10010200", None, _MC_CDOL1, _MC_CDOL2, _MC_RECORDS),
    contactless=_iface("1880", "08010100 10010200", None, _MC_CDOL1, _MC_CDOL2, _MC_RECORDS),
)

BRANDS: MappingProxyType[str, Brand] = MappingProxyType(
    {"unionpay": UNIONPAY, "visa": VISA, "mastercard": MASTERCARD})


def issuer_master_key(scheme: str) -> bytes:
    """The master key (AC) the rig's issuer holds for ``scheme``'s cards."""
    return bytes.fromhex(BRANDS[scheme].imk)
