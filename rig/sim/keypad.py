"""The keypad of a virtual terminal: what its keys do, as the robot's probe presses them.

The lab's :class:`rig.sim.world.CardWorld` knows where each key is (the terminal's
``stations.keypad`` plus its profile's key offsets) and calls :meth:`Keypad.press` when the
probe held a key down long enough (the world journals it as ``key_pressed``). Keys:

- ``SALE`` on an idle, signed-on terminal starts amount entry (``AMOUNT enter`` on the console);
- digits append to the amount (minor units, at most 10 digits), ``CLEAR`` empties it;
- ``ENTER`` starts the sale with that amount, exactly as ECR ``SALE <amount>`` does;
- ``CANCEL`` leaves amount entry, or cancels a transaction still waiting for its card.

Other keys (``MENU``, ``FUNC``…) are journaled and do nothing.
"""

from __future__ import annotations

from collections.abc import Callable

from ..core.clock import Stamp
from .parts import Voice
from .sale import Transactions

MAX_DIGITS = 10


class Keypad:
    """Amount entry of one terminal; its state dies with the power."""

    def __init__(self, voice: Voice, txns: Transactions, is_ready: Callable[[], bool]) -> None:
        self.voice, self.txns, self._is_ready = voice, txns, is_ready
        self.amount: str | None = None  # None: not entering an amount

    def reset(self) -> None:
        self.amount = None

    def press(self, key: str, at: Stamp) -> None:
        """The probe pressed ``key`` (``at``: when the press registered)."""
        if not self.voice.on:
            return
        if key == "SALE":
            if self._is_ready() and not self.txns.busy:
                self.amount = ""
                self.voice.say("INFO", "AMOUNT enter")
        elif key.isdigit() and len(key) == 1:
            if self.amount is not None and len(self.amount) < MAX_DIGITS:
                self.amount += key
        elif key == "CLEAR":
            if self.amount is not None:
                self.amount = ""
        elif key == "CANCEL":
            if self.amount is not None:
                self.amount = None
                self.voice.say("INFO", "AMOUNT cancelled")
            else:
                self.txns.cancel()
        elif key == "ENTER" and self.amount:
            amount, self.amount = self.amount, None
            reply = self.txns.ecr("SALE", [str(int(amount))])
            if not reply.startswith("OK"):
                self.voice.say("WARN", f"AMOUNT refused {reply}")
