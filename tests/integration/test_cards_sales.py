"""A sale on every shipped profile and each of its entry modes, on a virtual terminal talking to
the real acquirer host: the host verifies the chip's ARQC and answers with an ARPC that the
card checks at its second GENERATE AC; a card with another key is declined A7; a card with no
chip, inserted, ends in a swipe."""

from __future__ import annotations

import re
import time
from collections.abc import Iterator
from typing import Any

import pytest

from rig.cards.profiles import load_cards
from rig.host.server import AcquirerHost
from rig.sim import VirtualLab
from rig.timeline.events import EventKind, ListSink
from tests.labcfg import virtual_config
from tests.simkit import OPEN, CardMoves, Grbl, Lines, Scpi

pytestmark = pytest.mark.integration

CARDS = load_cards()
LINE = re.compile(r"^(\d+) (INFO|WARN|ERROR) (.+)$")
MOVE = {"chip": "insert", "swipe": "swipe", "tap": "tap"}


def ev(line: str) -> str:
    m = LINE.match(line)
    assert m, line
    return m.group(3)


class Bench:
    def __init__(self, tmp_path: Any) -> None:
        cfg = virtual_config(tmp_path, time_scale=0.05)
        assert cfg.robot is not None
        slots = dict(cfg.robot.magazine.slots)
        for name in sorted(CARDS):  # every shipped profile in the magazine
            if name not in slots.values():
                slots[max(slots) + 1] = name
        magazine = cfg.robot.magazine.model_copy(update={"slots": slots})
        self.cfg = cfg.model_copy(update={"robot": cfg.robot.model_copy(
            update={"magazine": magazine})})
        self.slot = {name: n for n, name in slots.items()}
        self.sink = ListSink()
        self.host = AcquirerHost(self.cfg, self.sink).start()
        self.lab = VirtualLab(self.cfg).start()
        self.scpi = Scpi(self.lab.addresses()["psu"])
        self.grbl = Grbl(self.lab.addresses()["robot"])
        self.con = Lines(self.lab.addresses()["T1.console"])
        end = time.monotonic() + 2
        while self.lab.terminals["T1"].console.clients < 1 and time.monotonic() < end:
            time.sleep(0.005)
        self.ecr = Lines(self.lab.addresses()["T1.ecr"])
        self.robot = CardMoves(self.grbl, self.cfg, feed_mm_min=60000)
        self.scpi.output(1, True)
        self.con.until("READY", 10)

    def close(self) -> None:
        for thing in (self.grbl, self.scpi):
            thing.close()
        self.lab.stop()
        self.host.stop()

    def present(self, card: str, entry: str) -> None:
        self.robot.pick(self.slot[card])
        if entry == "swipe":
            self.robot.swipe("T1", 400)
        elif entry == "tap":
            self.robot.tap("T1", 300)
        else:
            self.robot.insert("T1")

    def put_back(self, card: str, entry: str) -> None:
        if entry == "chip":
            self.robot.withdraw()
        self.robot.give_back(self.slot[card])

    def sale(self, card: str, entry: str, amount: int = 100) -> list[str]:
        assert self.ecr.ask(f"SALE {amount}") == "OK SALE started"
        self.con.until("CARD wait")
        self.present(card, entry)
        got = [ev(x) for x in self.con.until("RESULT", 10)]
        self.put_back(card, entry)
        return got

    def last_auth(self) -> dict[str, Any]:
        end = time.monotonic() + 2
        while time.monotonic() < end:
            rsp = [e for e in self.sink.events if e.kind is EventKind.AUTH_RSP]
            if rsp:
                return dict(rsp[-1].data)
            time.sleep(0.01)
        raise AssertionError("no AUTH_RSP")

    def chip(self, card: str) -> Any:
        world = self.lab.world
        assert world is not None
        return world.cards[self.slot[card]].chip


@pytest.fixture(scope="module")
def bench(tmp_path_factory) -> Iterator[Bench]:
    b = Bench(tmp_path_factory.mktemp("cards_sales"))
    yield b
    b.close()
    while OPEN:
        OPEN.pop().close()


GOOD = [(name, entry) for name, p in sorted(CARDS.items())
        if not p.mute and p.known_to_host and not p.expired() and name != "wrong_key"
        for entry in p.entry_modes]


@pytest.mark.parametrize(("card", "entry"), GOOD)
def test_sale_on_every_profile_and_entry_mode_is_approved_with_the_arqc_verified(
        bench: Bench, card: str, entry: str) -> None:
    got = bench.sale(card, entry)
    assert got[-1].startswith("RESULT approved rc=00"), got
    auth = bench.last_auth()
    assert auth["rc"] == "00" and auth["card"] == card
    if entry == "swipe":
        assert auth["arqc"] == "absent"
        return
    assert auth["arqc"] == "ok"  # the host recomputed the card's ARQC
    chip = bench.chip(card)
    assert chip.last_cid == (0x40 if entry == "chip" else 0x80)  # TC after the ARPC (contact)


@pytest.mark.parametrize("entry", ["chip", "tap"])
def test_a_card_with_another_key_is_declined_a7(bench: Bench, entry: str) -> None:
    got = bench.sale("wrong_key", entry)
    assert got[-1].startswith("RESULT declined rc=A7"), got
    auth = bench.last_auth()
    assert auth["rc"] == "A7" and auth["arqc"] == "failed" and auth["card"] == "wrong_key"
    if entry == "chip":
        assert bench.chip("wrong_key").last_cid == 0x00  # the terminal's AAC request
    assert bench.host.accounts.balance("wrong_key") == CARDS["wrong_key"].balance_minor


def test_a_chipless_card_inserted_is_mute_then_swiped(bench: Bench) -> None:
    """No chip: no ATR, insert again, then the terminal asks for a swipe (a plain one)."""
    assert bench.ecr.ask("SALE 100") == "OK SALE started"
    bench.con.until("CARD wait")
    bench.robot.pick(bench.slot["magstripe_only"])
    lines: list[str] = []
    for _ in range(bench.cfg.sim.chip_fallback_after):
        bench.robot.insert("T1")
        lines.append(ev(bench.con.next(5)))
        while lines[-1] not in ("CARD insert again", "CARD fallback swipe"):
            lines.append(ev(bench.con.next(5)))
        bench.robot.withdraw()
        if lines[-1] == "CARD fallback swipe":
            break
    assert lines[-1] == "CARD fallback swipe" and "CARD fail reason=no ATR" in lines
    bench.robot.swipe("T1", 400)
    got = [ev(x) for x in bench.con.until("RESULT", 10)]
    bench.robot.give_back(bench.slot["magstripe_only"])
    assert any(x.startswith("CARD read mode=swipe") for x in got), got
    assert got[-1].startswith("RESULT approved rc=00")
