"""PC/SC end to end: pcscd + vsmartcard's vpcd reader + VpcdCard + pyscard + check_card.

Needs pcscd, vsmartcard-vpcd and pyscard (and root, or a pcscd already running). With
``CI=true`` missing pieces FAIL the tests; elsewhere they skip and say how to enable them.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from rig.cards.emv import EmvCard
from rig.cards.kernel import read_card
from rig.cards.profiles import load_cards
from rig.cards.vpcd import VPCD_READER, VpcdCard
from rig.core.errors import InfrastructureError
from rig.drivers.reader import check_card

pytestmark = pytest.mark.integration

CARDS = load_cards()
VPCD_DRIVER = Path("/usr/lib/pcsc/drivers/serial/libifdvpcd.so")
APT = "apt-get install pcscd vsmartcard-vpcd (or scripts/install-system.sh)"


def _unavailable(why: str, enable: str) -> None:
    msg = f"{why}; enable with: {enable}"
    if os.environ.get("CI") == "true":
        pytest.fail(f"CI=true and PC/SC tests cannot run: {msg}")
    pytest.skip(msg)


def _context_ok(scard) -> bool:
    hr, ctx = scard.SCardEstablishContext(scard.SCARD_SCOPE_USER)
    if hr != scard.SCARD_S_SUCCESS:
        return False
    scard.SCardReleaseContext(ctx)
    return True


def _reader_names(scard) -> list[str]:
    hr, ctx = scard.SCardEstablishContext(scard.SCARD_SCOPE_USER)
    if hr != scard.SCARD_S_SUCCESS:
        return []
    try:
        hr, names = scard.SCardListReaders(ctx, [])
        return list(names or []) if hr == scard.SCARD_S_SUCCESS else []
    finally:
        scard.SCardReleaseContext(ctx)


VPCD_PORTS = (35963, 35964)  # vpcd's two slots (CHANNELID 0x8C7B and the next)


def _reserve_vpcd_ports() -> None:
    """vpcd binds its ports without SO_REUSEADDR: a TIME-WAIT socket that took one as its
    ephemeral port (any busy test on the machine) makes pcscd drop the reader. As root, keep
    the kernel from handing them out, then wait for leftovers to expire (60 s at most)."""
    import socket

    path = Path("/proc/sys/net/ipv4/ip_local_reserved_ports")
    try:
        cur = path.read_text().strip()
        if "35963-35964" not in cur and os.geteuid() == 0:
            path.write_text(",".join(x for x in (cur, "35963-35964") if x))
    except OSError:
        return
    end = time.monotonic() + 65
    while time.monotonic() < end:
        busy = False
        for port in VPCD_PORTS:
            with socket.socket() as sk:
                try:
                    sk.bind(("0.0.0.0", port))
                except OSError:
                    busy = True
        if not busy:
            return
        time.sleep(1)


@pytest.fixture(scope="module")
def pcscd(tmp_path_factory) -> Iterator[None]:
    """A pcscd with the vpcd reader: the running one, or one started (and stopped) here."""
    try:
        from smartcard import scard
    except ImportError:
        _unavailable("pyscard is not installed", ".venv/bin/pip install pyscard")
    exe = shutil.which("pcscd") or ("/usr/sbin/pcscd" if Path("/usr/sbin/pcscd").exists() else None)
    if not VPCD_DRIVER.exists():
        _unavailable(f"vpcd driver {VPCD_DRIVER} missing", APT)
    proc = None
    if not _context_ok(scard):
        if exe is None:
            _unavailable("pcscd is not installed", APT)
        _reserve_vpcd_ports()
        help_text = subprocess.run([exe, "--help"], capture_output=True, text=True).stdout
        args = [exe, "--foreground"] + (["--disable-polkit"] if "disable-polkit" in help_text else [])
        log = open(tmp_path_factory.mktemp("pcscd") / "pcscd.log", "w")  # noqa: SIM115
        proc = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL)
    try:
        end = time.monotonic() + 10
        while VPCD_READER not in _reader_names(scard):
            if proc is not None and proc.poll() is not None:
                _unavailable(f"pcscd exited with {proc.returncode} (needs root, or run "
                             "`sudo pcscd -f` yourself)", APT)
            if time.monotonic() > end:
                _unavailable(f"pcscd has no reader {VPCD_READER!r} (have "
                             f"{_reader_names(scard)})", APT + "; then restart pcscd")
            time.sleep(0.1)
        yield
    finally:
        if proc is not None:
            proc.terminate()
            try:
                proc.wait(5)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


@pytest.fixture(scope="module")
def slot(pcscd) -> Iterator[VpcdCard]:
    v = VpcdCard(None).start()
    yield v
    v.stop()


def put(slot: VpcdCard, name: str, contactless: bool = False) -> EmvCard:
    card = EmvCard(CARDS[name])
    slot.contactless = contactless
    slot.insert(card)
    assert slot.wait_powered(10), "pcscd never powered the virtual card"
    return card


def test_pyscard_sees_the_vpcd_reader(slot):
    from smartcard.System import readers

    put(slot, "cup_debit")
    assert VPCD_READER in [str(r) for r in readers()]


def test_check_cup_debit(slot):
    put(slot, "cup_debit")
    p = CARDS["cup_debit"]
    chk = check_card(VPCD_READER, timeout_s=5)
    assert chk.ok, chk.problems
    assert chk.reader == VPCD_READER and chk.atr == p.atr.upper()
    assert chk.aids == ["A000000333010101"] and chk.app_label == "UnionPay Debit"
    assert chk.masked_pan == "622202*********0128" and chk.expiry == "3012"
    assert p.pan not in repr(chk)


def test_check_expired(slot):
    put(slot, "expired")
    assert check_card("Virtual PCD", timeout_s=5).problems == ["expired (2001)"]


def test_check_mute(slot):
    put(slot, "mute")
    chk = check_card(VPCD_READER, timeout_s=5)
    assert chk.problems == ["no ATR (mute)"] and chk.atr is None


def test_check_magstripe_only(slot):
    """No chip: present in the reader, nothing answers a reset (as a mute chip)."""
    put(slot, "magstripe_only")
    chk = check_card(VPCD_READER, timeout_s=5)
    assert chk.problems == ["no ATR (mute)"] and chk.atr is None


def test_swap_and_remove(slot):
    slot.contactless = False
    put(slot, "visa_credit")
    assert check_card(VPCD_READER).aids == ["A0000000031010"]
    put(slot, "mc_debit")
    assert check_card(VPCD_READER).aids == ["A0000000041010"]
    slot.remove()
    time.sleep(1.0)  # pcscd polls presence every ~0.4 s
    assert check_card(VPCD_READER, timeout_s=0.5).problems[0].startswith("no card")


def test_full_read_with_arqc_over_pcsc(slot):
    """The terminal kernel, GENERATE AC included, through pcscd."""
    from smartcard.System import readers

    put(slot, "cup_credit")
    reader = next(r for r in readers() if str(r) == VPCD_READER)
    conn = reader.createConnection()
    conn.connect()
    try:
        def transmit(apdu: bytes) -> bytes:
            data, sw1, sw2 = conn.transmit(list(apdu))
            return bytes(data) + bytes([sw1, sw2])

        from datetime import date
        r = read_card(transmit, contactless=False, amount_minor=100,
                      unpredictable=b"\x01\x02\x03\x04", when=date(2025, 6, 1))
    finally:
        conn.disconnect()
    assert r.cid == 0x80 and r.atc == slot.card.atc == 1
    assert r.track2 == CARDS["cup_credit"].track2


def test_unknown_reader_is_an_infrastructure_error(pcscd):
    with pytest.raises(InfrastructureError, match="not found"):
        check_card("No Such Reader 99", timeout_s=0.1)


# --- every shipped profile, read by an EMV reader that follows the card's DOLs ------------

NUMERIC = {0x9F02, 0x9F03, 0x9F1A, 0x5F2A, 0x9A, 0x9C, 0x9F21, 0x9F35, 0x9F15}
TERMINAL = {0x9F02: bytes.fromhex("000000000100"), 0x9F03: bytes(6), 0x9F1A: b"\x01\x56",
            0x95: bytes.fromhex("8000000000"), 0x5F2A: b"\x01\x56", 0x9A: bytes.fromhex("250601"),
            0x9C: b"\x00", 0x9F37: bytes.fromhex("0BADCAFE"), 0x9F66: bytes.fromhex("26000000"),
            0x9F35: b"\x22", 0x9F34: bytes.fromhex("1F0302"), 0x9F21: bytes.fromhex("120000")}


def _fill(dol: bytes, values: dict[int, bytes]) -> tuple[bytes, dict[int, bytes]]:
    """DOL data written from EMV Book 3 §5.4 alone (not the rig's kernel)."""
    from rig.cards import tlv

    out, sent = b"", {}
    for tag, n in tlv.parse_dol(dol):
        v = values.get(tag, b"")
        v = (bytes(n) + v)[-n:] if tag in NUMERIC else (v + bytes(n))[:n]
        out += v
        sent.setdefault(tag, v)
    return out, sent


def dol_reader(transmit, contactless: bool) -> dict:
    """A small EMV reader independent of rig.cards.kernel: directory, SELECT, GPO with the
    card's PDOL (or 83 00), every record of the AFL, GENERATE AC over CDOL1."""
    from rig.cards import tlv

    def x(capdu: bytes, ok=(0x9000,)) -> tuple[bytes, int]:
        r = transmit(capdu)
        assert len(r) >= 2, f"no answer to {capdu[:4].hex()}"
        sw = int.from_bytes(r[-2:], "big")
        assert sw in ok, f"{capdu[:4].hex()} -> {sw:04X}"
        return r[:-2], sw

    def sel(name: bytes) -> bytes:
        return x(bytes([0, 0xA4, 4, 0, len(name)]) + name + b"\x00")[0]

    seen: dict = {"records": {}}
    if contactless:
        fci = sel(b"2PAY.SYS.DDF01")
        aids = [t.value for t in tlv.walk(tlv.parse(fci)) if t.tag == 0x4F]
    else:
        fci = sel(b"1PAY.SYS.DDF01")
        sfi = tlv.find(fci, 0x88)[0]
        aids, rec = [], 1
        while True:
            data, sw = x(bytes([0, 0xB2, rec, (sfi << 3) | 4, 0]), ok=(0x9000, 0x6A83))
            if sw != 0x9000:
                break
            aids += [t.value for t in tlv.walk(tlv.parse(data)) if t.tag == 0x4F]
            rec += 1
    seen["aid"] = aids[0].hex().upper()
    fci = tlv.flatten(tlv.parse(sel(aids[0])))
    seen["pdol"] = fci.get(0x9F38)
    pdol_data, _ = _fill(fci[0x9F38], TERMINAL) if 0x9F38 in fci else (b"", {})
    body = tlv.encode(0x83, pdol_data)
    seen["gpo"] = bytes.fromhex("80A80000") + bytes([len(body)]) + body + b"\x00"
    rsp, _ = x(seen["gpo"])
    top = tlv.parse(rsp)[0]
    aip, afl = ((top.value[:2], top.value[2:]) if top.tag == 0x80 else
                (tlv.find(rsp, 0x82), tlv.find(rsp, 0x94)))
    seen["aip"], seen["afl"] = aip, afl
    card: dict[int, bytes] = {}
    for i in range(0, len(afl), 4):
        for rec in range(afl[i + 1], afl[i + 2] + 1):
            data, _ = x(bytes([0, 0xB2, rec, afl[i] | 4, 0]))
            seen["records"][(afl[i] >> 3, rec)] = [t.tag for t in tlv.parse(data)[0].children]
            for t in tlv.walk(tlv.parse(data)):
                card.setdefault(t.tag, t.value)
    seen["card"] = card
    cdol1, sent = _fill(card[0x8C], TERMINAL)
    rsp, _ = x(bytes([0x80, 0xAE, 0x80, 0, len(cdol1)]) + cdol1 + b"\x00")
    top = tlv.parse(rsp)[0]
    ac = ({0x9F27: top.value[:1], 0x9F36: top.value[1:3], 0x9F26: top.value[3:11],
           0x9F10: top.value[11:]} if top.tag == 0x80 else tlv.flatten(tlv.parse(rsp)))
    seen["ac"], seen["sent"] = ac, sent
    seen["field55"] = tlv.encode_many([*ac.items(), (0x82, aip), *sent.items()])
    seen["x"] = x
    return seen


def _second_ac(seen: dict, arpc_91: bytes) -> bytes:
    """EXTERNAL AUTHENTICATE when the AIP says so and CDOL2 does not take 91; then the
    second GENERATE AC asking for a TC. The card's CID."""
    from rig.cards import tlv

    x, cdol2 = seen["x"], seen["card"][0x8D]
    if seen["aip"][0] & 0x04 and 0x91 not in dict(tlv.parse_dol(cdol2)):
        x(bytes([0x00, 0x82, 0, 0, len(arpc_91)]) + arpc_91)
    data, _ = _fill(cdol2, {**TERMINAL, **seen["sent"], 0x8A: b"00", 0x91: arpc_91})
    rsp, _ = x(bytes([0x80, 0xAE, 0x40, 0, len(data)]) + data + b"\x00")
    top = tlv.parse(rsp)[0]
    return (top.value[:1] if top.tag == 0x80 else tlv.find(rsp, 0x9F27))[0]


def _connected(fn):
    from smartcard.System import readers

    reader = next(r for r in readers() if str(r) == VPCD_READER)
    conn = reader.createConnection()
    conn.connect()
    try:
        def transmit(apdu: bytes) -> bytes:
            data, sw1, sw2 = conn.transmit(list(apdu))
            return bytes(data) + bytes([sw1, sw2])

        return fn(transmit)
    finally:
        conn.disconnect()


@pytest.mark.parametrize("contactless", [False, True], ids=["contact", "contactless"])
def test_every_profile_read_end_to_end_by_a_dol_following_reader(slot, contactless):
    from rig.cards.issuer import check_arqc

    iface = "contactless" if contactless else "contact"
    no_pdol: set[str] = set()
    slot.swap_gap_s = 0.6  # > one presence poll of pcscd (0.4 s): it sees each swap
    for name, p in sorted(CARDS.items()):
        if p.mute or not (p.has_contactless if contactless else p.has_contact):
            continue  # no chip / antenna here: see the tests below
        card = put(slot, name, contactless)
        img = card.image.interface(iface)

        def session(transmit, p=p, contactless=contactless):
            seen = dol_reader(transmit, contactless)
            chk = check_arqc(seen["field55"], scheme=p.scheme, pan=p.pan,
                             pan_sequence=p.pan_sequence)
            cid = None
            if chk.status == "ok" and not contactless:  # the issuer's answer reaches the card
                cid = _second_ac(seen, chk.issuer_auth_data("00"))
            return seen, chk, cid

        seen, chk, cid = _connected(session)
        assert seen["aid"] == p.aids[0] and (seen["aip"], seen["afl"]) == (img.aip, img.afl)
        assert seen["pdol"] == img.pdol, name
        if img.pdol is None:  # no PDOL: GPO with 83 00, exactly
            assert seen["gpo"] == bytes.fromhex("80A80000028300" "00")
            no_pdol.add(p.scheme)
        assert set(seen["records"]) == set(img.afl_records()) == set(img.records)
        assert seen["card"][0x5A].hex().upper().rstrip("F") == p.pan
        assert seen["ac"][0x9F27] == b"\x80" and card.atc == 1
        assert chk.status == ("failed" if name == "wrong_key" else "ok"), name
        assert cid == (0x40 if chk.status == "ok" and not contactless else None), name
    slot.swap_gap_s = 1.0
    if not contactless:
        assert no_pdol == {"unionpay", "visa", "mastercard"}


def test_no_answer_where_a_card_has_no_interface(slot):
    """A contact-only card in the field is not there; a chipless card in the contact reader is
    present but unpowerable (card check: no ATR); the card check reports both as profiled."""
    from rig.control.cardcheck import compare

    slot.contactless = True
    chip = EmvCard(CARDS["contact_only"])
    slot.insert(chip)
    assert not slot.wait_connected(1.0)
    chk = check_card(VPCD_READER, timeout_s=0.5, contactless=True)
    assert chk.problems[0].startswith("no card")
    from dataclasses import asdict

    rep = compare(chip, asdict(chk), [], contactless=True)
    assert rep.ok and rep.expected == chk.problems and rep.deviations == []
    slot.contactless = False
    put(slot, "magstripe_only")
    chk = check_card(VPCD_READER, timeout_s=5)
    rep = compare(EmvCard(CARDS["magstripe_only"]), asdict(chk), [], contactless=False)
    assert chk.problems == ["no ATR (mute)"] and rep.ok


def test_card_check_reports_data_objects_and_deviations(slot):
    """The card check's comparison of what went over PC/SC with the profile."""
    from dataclasses import asdict

    from rig.control.cardcheck import compare

    slot.contactless = False
    card = EmvCard(CARDS["mc_debit"])
    transcript: list[tuple[bytes, bytes]] = []
    slot._transcript = lambda c, r: transcript.append((c, r))
    try:
        slot.insert(card)
        assert slot.wait_powered(10)
        chk = check_card(VPCD_READER, timeout_s=5)
    finally:
        slot._transcript = None
    rep = compare(card, asdict(chk), transcript, contactless=False)
    assert rep.ok and rep.deviations == [], rep.deviations
    assert rep.data_objects["contact"]["pdol"] is None and rep.seen["pdol"] is None
    assert rep.seen["cdol2"] == rep.data_objects["contact"]["cdol2"]
    # the same answers held against another profile: every difference is named
    other = EmvCard(CARDS["visa_credit"])
    rep = compare(other, asdict(chk), transcript, contactless=False)
    assert not rep.ok and any(d.startswith("CDOL1 (8C)") for d in rep.deviations)
    assert CARDS["mc_debit"].pan not in repr(rep)
