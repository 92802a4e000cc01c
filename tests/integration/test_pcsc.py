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


def put(slot: VpcdCard, name: str) -> None:
    slot.insert(EmvCard(CARDS[name]))
    assert slot.wait_powered(10), "pcscd never powered the virtual card"


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
    put(slot, "magstripe_only")
    assert check_card(VPCD_READER, timeout_s=5).problems == ["no supported application"]


def test_swap_and_remove(slot):
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
