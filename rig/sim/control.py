"""The virtual lab's control port: card faults and terminal quirks, switched at run time.

The controller never imports :mod:`rig.sim`; it reaches this port like any bench fixture, over
TCP on ``sim.control_listen`` (``host:port``; null: no control port). The protocol is small and
stable: JSON lines (UTF-8), one request object per line (``\\n`` or ``\\r\\n``, at most 4096
bytes), one reply object per request on one ``\\n``-terminated line, in order. Any request may
carry ``"id"`` (any JSON value); the reply echoes it. Replies are ``{"ok": true, ...}`` or
``{"ok": false, "error": "<what is wrong>"}``; an error changes nothing. Unknown keys in a
request are an error.

Requests and replies (besides ``ok`` and ``id``):

``{"op": "card_fault", "card": "<profile>", "fault": "mute" | "corrupt_record" | "bad_lrc" | null}``
    Every physical card of that profile in the magazine gets the fault (null clears it):
    ``mute`` no ATR, the chip answers nothing; ``corrupt_record`` READ RECORD (after GET
    PROCESSING OPTIONS) answers garbage, the kernel fails; ``bad_lrc`` every swipe read fails
    (``CARD fail reason=bad LRC, swipe again``).
    → ``{"card": "cup_debit", "fault": "mute", "was": null, "slots": [1]}``
``{"op": "quirk", "terminal": "T1", "quirk": "<name>", "on": true | false}``
    Break one behaviour of a virtual terminal (see :data:`rig.sim.terminal.QUIRKS`):
    ``no_reversal``, ``no_resignon``, ``no_retry``, ``no_fallback``, ``ignore_login``.
    → ``{"terminal": "T1", "quirk": "no_reversal", "on": true, "was": false, "quirks": [...]}``
``{"op": "state", "terminal": "T1"}``
    → ``{"terminal": "T1", "state": "READY", "signed_on": true, "busy": false,
    "reversal_pending": false, "reversal_stan": null, "quirks": []}``
``{"op": "status"}``
    What is switched on now, and what could be.
    → ``{"card_faults": {"cup_debit": "mute"}, "quirks": {"T1": ["no_reversal"]},
    "cards": [...profiles in the magazine], "terminals": [...], "known_faults": [...],
    "known_quirks": [...]}``
``{"op": "clear"}``
    Clear every card fault and every quirk; the reply says what was on, as readable items
    (empty when nothing was) and as data. → ``{"cleared": ["card cup_debit: mute",
    "T1 quirk no_reversal"], "card_faults": {"cup_debit": "mute"},
    "quirks": {"T1": ["no_reversal"]}}``

Every change is written to the truth journal: ``card_fault`` (``card``, ``fault``, ``was``,
``slots``; terminal null), ``quirk`` (``quirk``, ``on``, ``was``; the terminal's) and
``control_clear`` (what was cleared); while a quirk changes what a terminal does, its
``quirk_effect`` entries say what was skipped.
"""

from __future__ import annotations

import json
import logging
from typing import Any

from .journal import TruthJournal
from .lines import LineServer
from .terminal import QUIRKS, VirtualTerminal
from .world import CARD_FAULTS, CardWorld

log = logging.getLogger(__name__)

OPS: dict[str, tuple[str, ...]] = {  # op -> keys it takes (besides "op" and "id")
    "card_fault": ("card", "fault"),
    "quirk": ("terminal", "quirk", "on"),
    "state": ("terminal",),
    "status": (),
    "clear": (),
}


class ControlError(Exception):
    """A request the control port refuses (its message is the reply's ``error``)."""


class ControlServer:
    """Serves the control protocol for one lab's terminals and card world (in the lab's loop)."""

    def __init__(self, terminals: dict[str, VirtualTerminal], world: CardWorld | None,
                 journal: TruthJournal) -> None:
        self.terminals = terminals
        self.world = world
        self.journal = journal
        self.server = LineServer("control", lambda line, _rx: self.handle(line), eol=b"\n")

    async def start(self, host: str, port: int) -> None:
        await self.server.start(host, port)

    async def stop(self) -> None:
        await self.server.stop()

    @property
    def address(self) -> tuple[str, int] | None:
        return self.server.address

    # --- protocol -----------------------------------------------------------------------------
    def handle(self, line: str) -> str:
        """One request line -> one reply line (never raises)."""
        rid: Any = None
        has_id = False
        try:
            try:
                req = json.loads(line)
            except ValueError as e:
                raise ControlError(f"bad JSON: {e}") from None
            if not isinstance(req, dict):
                raise ControlError("a request is a JSON object, e.g. {\"op\": \"status\"}")
            has_id, rid = "id" in req, req.get("id")
            op = req.get("op")
            if not isinstance(op, str) or op not in OPS:
                raise ControlError(f"unknown op {op!r} (known: {', '.join(OPS)})")
            extra = sorted(set(req) - {"op", "id", *OPS[op]})
            if extra:
                raise ControlError(f"{op}: unexpected key(s) {', '.join(extra)}")
            reply: dict[str, Any] = {"ok": True, **getattr(self, f"_op_{op}")(req)}
        except ControlError as e:
            reply = {"ok": False, "error": str(e)}
        except Exception as e:  # a bug must still answer
            log.exception("control request %r failed", line)
            reply = {"ok": False, "error": f"internal error: {e!r}"}
        if has_id:
            reply["id"] = rid
        return json.dumps(reply, separators=(",", ":"), default=str)

    def _terminal(self, req: dict[str, Any]) -> VirtualTerminal:
        name = req.get("terminal")
        if not isinstance(name, str) or name not in self.terminals:
            raise ControlError(f"unknown terminal {name!r} (known: {', '.join(self.terminals)})")
        return self.terminals[name]

    def _op_card_fault(self, req: dict[str, Any]) -> dict[str, Any]:
        if self.world is None:
            raise ControlError("card_fault: this lab has no card robot, so no cards")
        card, fault = req.get("card"), req.get("fault")
        if not isinstance(card, str):
            raise ControlError(f"card_fault: card must be a card profile name, not {card!r}")
        if "fault" not in req:
            raise ControlError("card_fault: fault is missing (a fault name, or null to clear)")
        if fault is not None and fault not in CARD_FAULTS:
            raise ControlError(f"card_fault: unknown fault {fault!r} "
                               f"(known: {', '.join(CARD_FAULTS)}, null)")
        try:
            slots, was = self.world.set_fault(card, fault)
        except ValueError as e:
            raise ControlError(f"card_fault: {e}") from None
        return {"card": card, "fault": fault, "was": was, "slots": slots}

    def _op_quirk(self, req: dict[str, Any]) -> dict[str, Any]:
        t = self._terminal(req)
        quirk, on = req.get("quirk"), req.get("on")
        if not isinstance(quirk, str) or quirk not in QUIRKS:
            raise ControlError(f"quirk: unknown quirk {quirk!r} (known: {', '.join(QUIRKS)})")
        if not isinstance(on, bool):
            raise ControlError(f"quirk: on must be true or false, not {on!r}")
        was = quirk in t.quirks
        (t.quirks.add if on else t.quirks.discard)(quirk)
        self.journal.record(t.name, "quirk", quirk=quirk, on=on, was=was)
        log.info("%s: quirk %s %s", t.name, quirk, "on" if on else "off")
        return {"terminal": t.name, "quirk": quirk, "on": on, "was": was, "quirks": sorted(t.quirks)}

    def _op_state(self, req: dict[str, Any]) -> dict[str, Any]:
        t = self._terminal(req)
        rev = t.txns.reversal
        return {"terminal": t.name, "state": str(t.state), "signed_on": t.ready,
                "busy": t.txns.busy, "reversal_pending": rev is not None,
                "reversal_stan": None if rev is None else str(rev.get("11")),
                "quirks": sorted(t.quirks)}

    def _active(self) -> tuple[dict[str, str], dict[str, list[str]]]:
        faults = dict(sorted(self.world.faults.items())) if self.world is not None else {}
        quirks = {n: sorted(t.quirks) for n, t in self.terminals.items() if t.quirks}
        return faults, quirks

    def _op_status(self, _req: dict[str, Any]) -> dict[str, Any]:
        faults, quirks = self._active()
        return {"card_faults": faults, "quirks": quirks,
                "cards": self.world.profiles() if self.world is not None else [],
                "terminals": list(self.terminals), "known_faults": list(CARD_FAULTS),
                "known_quirks": list(QUIRKS)}

    def _op_clear(self, _req: dict[str, Any]) -> dict[str, Any]:
        faults, quirks = self._active()
        if self.world is not None:
            for card in faults:
                self.world.set_fault(card, None)
        for t in self.terminals.values():
            for q in sorted(t.quirks):
                t.quirks.discard(q)
                self.journal.record(t.name, "quirk", quirk=q, on=False, was=True)
        items = [f"card {c}: {f}" for c, f in faults.items()]
        items += [f"{n} quirk {q}" for n, qs in quirks.items() for q in qs]
        self.journal.record(None, "control_clear", cleared=items, card_faults=faults, quirks=quirks)
        return {"cleared": items, "card_faults": faults, "quirks": quirks}
