from hypothesis import given
from hypothesis import strategies as st

from rig.core.redact import mask_pan, redact_message, redact_text


def test_mask_pan():
    assert mask_pan("6222021234567890123") == "622202*********0123"
    assert mask_pan("4761739001010010") == "476173******0010"


def test_redact_text_masks_pans_and_track2():
    s = "card 6222021234567890123 track ;6222021234567890123=25122011234567890?"
    r = redact_text(s)
    assert "6222021234567890123" not in r
    assert "<track2>" in r and "622202*********0123" in r


def test_redact_message_drops_secrets():
    m = {"t": "0200", "2": "6222021234567890123", "35": "6222021234567890123D2512201",
         "52": b"\x01" * 8, "55": b"\x9f\x26" * 5, "62": b"k" * 24, "64": b"12345678", "11": "000001"}
    r = redact_message(m)
    assert r["2"] == "622202*********0123"
    for f in ("35", "52", "55", "62", "64"):
        assert "redacted" in str(r[f])
    assert r["11"] == "000001"


@given(st.text(alphabet="0123456789 ;=?abc", max_size=80))
def test_no_long_digit_run_survives(s):
    r = redact_text(s)
    import re

    for run in re.findall(r"\d{13,19}", r):
        raise AssertionError(f"unmasked digits {run!r} in {r!r}")
