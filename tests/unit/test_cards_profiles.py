"""Card profiles as personalised cards: brand defaults, overrides, and file:line errors for an
inconsistent card."""

from __future__ import annotations

from pathlib import Path

import pytest

from rig.cards import tlv
from rig.cards.brands import BRANDS
from rig.cards.emv import EmvCard
from rig.cards.image import build_image
from rig.cards.profiles import load_cards
from rig.core.errors import ConfigError

BASE = """\
name: t
scheme: {scheme}
pan: "6222021234567890128"
expiry: "3012"
aids: [A000000333010101]
entry_modes: {modes}
"""


def write(tmp_path: Path, emv: str, scheme: str = "unionpay",
          modes: str = "[chip, swipe, tap]") -> Path:
    (tmp_path / "t.yaml").write_text(BASE.format(scheme=scheme, modes=modes) + emv)
    return tmp_path


def error(tmp_path: Path, emv: str, **kw: str) -> str:
    with pytest.raises(ConfigError) as e:
        load_cards(write(tmp_path, emv, **kw))
    text = str(e.value)
    assert "6222021234567890128" not in text
    return text


def test_shipped_profiles_build_with_their_brand_defaults() -> None:
    cards = load_cards()
    for name, p in cards.items():
        img = build_image(p)
        brand = BRANDS[p.scheme]
        assert img.iad == bytes.fromhex("".join(brand.iad.split()))
        if img.contact is not None:
            assert img.contact.aip == bytes.fromhex(brand.contact.aip) or name == "?"
    assert build_image(cards["cup_credit"]).contact.pdol is None  # its own override
    assert build_image(cards["cup_debit"]).contact.pdol == bytes.fromhex("9F7A019F02065F2A02")
    assert build_image(cards["visa_credit"]).language == "en"
    assert build_image(cards["magstripe_only"]).contact is None
    assert build_image(cards["contact_only"]).contactless is None


def test_overrides_per_interface(tmp_path: Path) -> None:
    cards = load_cards(write(tmp_path, """\
emv:
  priority: 3
  preferred_name: "MY CARD"
  language: "enzh"
  data: {9F14: "00", 9F23: "00"}
  contactless:
    pdol: "9F66 04 9F02 06 9F1A 02 9F37 04"
    afl: "08010100"
    records:
      "1.1": [57, 5A, 5F24, 5F34, 8C, 8D, 9F14, 9F23]
"""))
    img = build_image(cards["t"])
    assert img.priority == 3 and img.preferred_name == "MY CARD" and img.language == "enzh"
    assert img.contactless.pdol == bytes.fromhex("9F66049F02069F1A029F3704")
    assert img.contactless.record_tags[(1, 1)][-2:] == (0x9F14, 0x9F23)
    assert img.contact.afl == bytes.fromhex(BRANDS["unionpay"].contact.afl.replace(" ", ""))
    card = EmvCard(cards["t"])
    card.power_up(contactless=True)
    fci = card.transmit(bytes.fromhex("00A4040008A00000033301010100"))
    assert tlv.find(fci[:-2], 0x87) == b"\x03" and tlv.find(fci[:-2], 0x9F12) == b"MY CARD"


@pytest.mark.parametrize(("emv", "line", "words"), [
    ("emv:\n  contact:\n    afl: \"08010300\"\n", 9, "SFI 1 record 2"),
    ("emv:\n  contact:\n    records:\n      \"1.1\": [57, 5A, 5F24, 8C, 8D, 9F14]\n"
     "    afl: \"08010100\"\n", 10, "9F14"),
    ("emv:\n  contactless:\n    pdol: \"5A 0A\"\n", 9, "card holds itself"),
    ("emv:\n  contactless:\n    pdol: \"9F7F 02\"\n", 9, "no terminal knows"),
    ("emv:\n  contact:\n    cdol1: \"9F02 06 9F03 06 9F1A 02 95 05 5F2A 02 9A 03 9C 01\"\n", 9,
     "9F37"),
    ("emv:\n  contact:\n    cdol1: \"9F02 06 9F03 06 9F1A 02 95 05 5F2A 02 9A 03 9C 01 9F37 02\"\n",
     9, "2 bytes of 9F37"),
    ("emv:\n  contact:\n    cdol2: \"9505 9F3704\"\n", 9, "8A"),
    ("emv:\n  contact:\n    pdol: \"8A02\"\n", 9, "CDOL2 only"),
    ("emv:\n  contact:\n    aip: \"5C00\"\n", 9, "offline data authentication"),
    ("emv:\n  contact:\n    afl: \"08010101\"\n", 9, "offline data authentication"),
    ("emv:\n  contact:\n    afl: \"0801\"\n", 9, "4 bytes"),
    ("emv:\n  data:\n    5A: \"1234\"\n", 9, "comes from pan"),
    ("emv:\n  data:\n    9F37: \"01020304\"\n", 9, "terminal data"),
    ("emv:\n  imk: \"0011\"\n", 8, "16 bytes"),
    ("emv:\n  language: \"Chinese\"\n", 8, "ISO 639"),
    ("emv:\n  contact:\n    records:\n      \"x\": [57]\n", 10, "SFI.record"),
    ("emv:\n  contact:\n    records:\n      1.1: [57]\n", 9, "quoted"),
])
def test_inconsistent_profiles_fail_with_file_and_line(tmp_path: Path, emv: str, line: int,
                                                       words: str) -> None:
    text = error(tmp_path, emv)
    assert f"t.yaml:{line}:" in text and words in text, text


def test_an_interface_the_card_does_not_have(tmp_path: Path) -> None:
    text = error(tmp_path, "emv:\n  contactless:\n    pdol: none\n", modes="[chip, swipe]")
    assert "t.yaml:8:" in text and "no contactless interface" in text
    text = error(tmp_path, "emv:\n  contact:\n    pdol: none\n", modes="[tap]")
    assert "no contact interface" in text


def test_pydantic_errors_name_nested_lines(tmp_path: Path) -> None:
    text = error(tmp_path, "emv:\n  priority: 99\n")
    assert "t.yaml:8: emv.priority" in text
    text = error(tmp_path, "emv:\n  contact:\n    aipp: \"1C00\"\n")
    assert "t.yaml:9: emv.contact.aipp: unknown key" in text
