"""A virtual POS terminal: power -> boot -> operator login -> clock sync -> sign-on -> READY -> sales.

It lives on the lab's asyncio loop. Its console and ECR ports are TCP line servers that
listen whether or not it has power (like USB-serial adapters). Every simulated delay is
drawn from the configured distribution and multiplied by ``sim.time_scale`` (back-offs too);
boot counts from the power-on stamp. The sign-on timeout is not scaled: it bounds how long the
terminal tolerates the outside world (network, host, fault proxy), which runs in real time.
Every step is written to the truth journal with the kernel's stamp at the socket it crossed
(:mod:`rig.sim.wire`): power on/off with the receive stamp of the SCPI line that switched the
output, console lines (boot, login, READY, …) with the transmit stamp of their write to the
console port, the 0800 with its transmit stamp, the 0810 with its receive stamp, ECR commands
(``ecr_cmd``) and replies (``ecr_reply``) likewise; ``clock`` in each entry says which.
Card transactions (ECR ``SALE`` ...) live in :mod:`rig.sim.sale`, which sees only the parts
the terminal lends it (:mod:`rig.sim.parts`); card events come from the lab's
:class:`rig.sim.world.CardWorld`. With ``sim.netns`` its host connections (sign-on and
sales) start inside the lab's network namespace and leave through its veth; console and ECR
stay where they are.

The terminal emulates the model its profile describes (:mod:`rig.terminal_profiles`): its
console prints each line in the profile's format and encoding (:class:`rig.sim.parts.Voice`),
its ECR port speaks the profile's ECR protocol (line, or framed: :mod:`rig.sim.ecr_framed`),
and its keypad (:mod:`rig.sim.keypad`) takes the robot's key presses. After boot, a terminal
without ``auto_login`` says ``LOGIN wait`` (the login prompt) and waits for ECR ``LOGIN``.

Quirks (:data:`QUIRKS`, switched through the lab's control port, :mod:`rig.sim.control`) break
one correct behaviour each, so a scenario can show its verdict turning to fail:
``no_reversal`` (never stores or sends a reversal), ``no_resignon`` (ignores A0),
``no_retry`` (gives up after the first failed sign-on attempt), ``no_fallback`` (never offers
fallback to swipe), ``ignore_login`` (accepts any operator id and password). A quirk prints
nothing on the console (a faulty terminal does not say so); each time one changes what the
terminal does, the truth journal gets a ``quirk_effect`` entry.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import re
from collections.abc import Coroutine
from enum import StrEnum
from typing import Any

from ..config import SimConfig, TerminalConfig
from ..core.clock import Stamp
from ..iso8583 import cup
from ..iso8583.keys import WorkingKeys
from ..terminal_profiles import TerminalProfile, load_profile
from .ecr_framed import FramedServer
from .journal import TruthJournal
from .keypad import Keypad
from .lines import LineServer, parse_hostport, parse_socket_url
from .parts import Delays, HostRoute, Memory, Voice
from .sale import COMMANDS, SaleContext, Transactions
from .signon import RC_PROTOCOL, SignonOutcome, exchange
from .wire import WireStamp, thread_stamp
from .world import CardEvent, CardWorld

log = logging.getLogger(__name__)


QUIRKS = ("no_reversal", "no_resignon", "no_retry", "no_fallback", "ignore_login")
_LOGIN_PASSWORD = re.compile(r"^(\s*LOGIN\s+\S+\s+)\S+", re.IGNORECASE)


class TerminalState(StrEnum):
    OFF = "OFF"
    BOOTING = "BOOTING"
    LOGIN = "LOGIN"  # booted, waiting for the operator
    SIGNON = "SIGNON"  # logged in: clock sync, sign-on attempts and back-offs
    READY = "READY"
    NOT_SIGNED_ON = "NOT_SIGNED_ON"  # gave up signing on


class VirtualTerminal:
    """One simulated terminal; ``power()`` is called by the PSU server in the lab's loop."""

    @property
    def state(self) -> TerminalState:
        return self._state

    @state.setter
    def state(self, st: TerminalState) -> None:
        # a terminal without power has no state but OFF, whatever a late task tries to set
        # (asyncio.wait_for in 3.11 can swallow the cancel that power-off sends its task)
        voice = getattr(self, "voice", None)
        self._state = st if voice is None or voice.on \
            else TerminalState.OFF

    def __init__(self, name: str, tcfg: TerminalConfig, sim: SimConfig, journal: TruthJournal,
                 rng: random.Random, netns: str | None = None,
                 profile: TerminalProfile | None = None) -> None:
        self.name = name
        self.profile = profile or load_profile("vlab")
        self.tcfg = tcfg
        self.sim = sim
        self.journal = journal
        self.state = TerminalState.OFF
        self.memory = Memory()  # STAN, batch, working keys: kept across power cycles
        self.rng = rng
        self.delays = Delays(sim, rng)
        self._tmk = bytes.fromhex(tcfg.tmk)
        self.route = HostRoute(*parse_hostport(tcfg.host_path), netns=netns)
        self._task: asyncio.Task[None] | None = None
        self._login = asyncio.Event()
        self.console = LineServer(f"{name} console", tx_stamps=True, encoding=self.profile.encoding)
        self.ecr: LineServer | FramedServer
        if self.profile.ecr == "framed":
            self.ecr = FramedServer(f"{name} ecr", self._on_ecr, tx_stamps=True,
                                    on_reply=self._ecr_replied, retries=self.profile.ecr_retries)
        else:
            self.ecr = LineServer(f"{name} ecr", self._on_ecr, tx_stamps=True,
                                  on_reply=self._ecr_replied)
        self.quirks: set[str] = set()  # see QUIRKS
        self.voice = Voice(name, self.console, journal, self.quirks, profile=self.profile)
        self.txns = Transactions(SaleContext(
            self.voice, self.memory, self.delays, tcfg, self.route,
            is_ready=lambda: self.ready, on_mac_error=self.sign_on_again))
        self.keypad = Keypad(self.voice, self.txns, is_ready=lambda: self.ready)

    @property
    def keys(self) -> WorkingKeys | None:
        """The working keys of the last good sign-on."""
        return self.memory.keys

    @property
    def world(self) -> CardWorld | None:
        """The lab's card world (set by the lab when it has a card robot)."""
        return self.txns.world

    @world.setter
    def world(self, world: CardWorld | None) -> None:
        self.txns.world = world

    # --- lifecycle of the servers -------------------------------------------------------------
    async def start(self) -> None:
        """Start listening on the console and ECR ports (terminal stays off)."""
        if self.tcfg.console:
            await self.console.start(*parse_socket_url(self.tcfg.console, f"{self.name}.console"))
        if self.tcfg.ecr:
            await self.ecr.start(*parse_socket_url(self.tcfg.ecr, f"{self.name}.ecr"))

    async def stop(self) -> None:
        """Stop the simulation and close the ports (no journal entry: the lab went away)."""
        self.state = TerminalState.OFF
        self.voice.on = False
        self.txns.power_off()
        await self._cancel()
        await self.console.stop()
        await self.ecr.stop()

    # --- power --------------------------------------------------------------------------------
    def power(self, on: bool, volts: float, at: WireStamp | None = None) -> None:
        """The supply changed: on at >= ``sim.min_voltage`` boots, anything else is off.

        The output switches when the lab's PSU executes the command, as a real supply switches
        after parsing it: that moment is the truth (``clock: thread`` — the lab's own action,
        no socket involved) and boot counts from it. ``at`` is when the SCPI line arrived (the
        kernel's receive stamp), kept as ``cmd_rx_*``; ``lag_us`` is the gap between the two.
        """
        live = on and volts >= self.sim.min_voltage
        if live == self.voice.on:  # the power, not the state: a task that survived its
            return                 # cancel may have set the state after the power went off
        stamp = thread_stamp()
        rx = at or stamp
        lag_us = (stamp.mono_ns - rx.mono_ns) // 1000  # the lab's loop: line arrived -> switched
        cmd = {"cmd_rx_mono_ns": rx.mono_ns, "cmd_rx_wall_ns": rx.wall_ns, "cmd_clock": rx.clock,
               "lag_us": lag_us}
        if live:
            self.voice.on, self.voice.boot_ns = True, stamp.mono_ns
            self._login = asyncio.Event()
            self.state = TerminalState.BOOTING
            self.journal.record(self.name, "power_on", stamp, volts=volts, **cmd)
            self._spawn(self._life())
        else:
            self.state = TerminalState.OFF
            self.voice.on = False
            self.txns.power_off()
            self.keypad.reset()
            self.journal.record(self.name, "power_off", stamp, volts=volts,
                                reason="output off" if not on else "brownout", **cmd)
            if self._task is not None:
                self._task.cancel()
                self._task = None

    def load(self) -> float:
        """Current drawn now (A)."""
        if self.state is TerminalState.OFF:
            return 0.0
        if self.state is TerminalState.BOOTING:
            return self.sim.boot_current_a
        return self.sim.txn_current_a if self.txns.busy else self.sim.idle_current_a

    @property
    def ready(self) -> bool:
        return self.state is TerminalState.READY

    def card_event(self, ev: CardEvent) -> None:
        """The world saw a card inserted / removed / swiped / tapped here."""
        if self.state is not TerminalState.OFF:
            self.txns.card_event(ev)

    def key_press(self, key: str, at: Stamp) -> None:
        """The world saw the robot's probe press ``key`` on this terminal's keypad."""
        if self.state is not TerminalState.OFF:
            self.keypad.press(key, at)

    def sign_on_again(self) -> None:
        """Start a fresh sign-on (after a MAC error), unless off or already signing on."""
        if self.state not in (TerminalState.OFF, TerminalState.SIGNON):
            self.state = TerminalState.SIGNON
            self._spawn(self._signon())

    # --- the terminal's life after power on -----------------------------------------------------
    async def _life(self) -> None:
        await self.delays.sleep(self.sim.boot, since_ns=self.voice.boot_ns)
        self.state = TerminalState.LOGIN
        self.say("INFO", "BOOT done", what="boot_done")
        if self.tcfg.auto_login:
            with contextlib.suppress(TimeoutError):  # an ECR LOGIN may come first
                await asyncio.wait_for(self._login.wait(), self.delays.draw_s(self.sim.login))
        else:
            self.say("INFO", "LOGIN wait", what="login_prompt")
            await self._login.wait()
        op = self.tcfg.operator.id
        self.state = TerminalState.SIGNON
        self.say("INFO", f"LOGIN ok op={op}", what="login", op=op)
        await self.delays.sleep(self.sim.clock_sync)
        self.say("INFO", "CLOCK sync", what="clock_sync")
        await self._signon()

    async def _signon(self) -> None:
        attempts = 1 + self.sim.signon_retries
        for n in range(1, attempts + 1):
            self.say("INFO", f"SIGNON start attempt={n}")
            out = await self._attempt()
            if out.ok:
                self.memory.keys = out.keys
                self.say("INFO", "SIGNON ok", what="signon_ok", attempt=n, stan=f"{self.memory.stan:06d}")
                await self.delays.sleep(self.sim.ready)
                self.state = TerminalState.READY
                self.say("INFO", "READY", what="ready")
                return
            log.info("%s: sign-on attempt %d failed: %s (%s)", self.name, n, out.reason, out.detail)
            self.say("WARN", f"SIGNON fail rc={out.rc} attempt={n}", what="signon_fail",
                      rc=out.rc, attempt=n, reason=out.reason, detail=out.detail)
            if n < attempts:
                if self.quirk("no_retry", skipped="sign-on retries", attempt=n):
                    break
                await self.delays.sleep_ms(self._backoff_ms(n - 1))
        self.state = TerminalState.NOT_SIGNED_ON
        self.memory.keys = None
        self.say("ERROR", "SIGNON giveup")

    async def _attempt(self) -> SignonOutcome:
        request = cup.signon_request(
            stan=self.memory.next_stan(), terminal_id=self.tcfg.terminal_id,
            merchant_id=self.tcfg.merchant_id, batch=f"{self.memory.batch:06d}",
            key_mode=self.tcfg.key_mode, operator=self.tcfg.operator.id)
        try:
            return await exchange(
                self.route.host, self.route.port, request, tmk=self._tmk, key_mode=self.tcfg.key_mode,
                timeout_s=self.sim.signon_timeout_ms / 1000.0,
                on_io=self._journal_io, netns=self.route.netns)
        except Exception as e:  # a bug must not kill the terminal silently
            log.exception("%s: sign-on exchange failed", self.name)
            return SignonOutcome(False, RC_PROTOCOL, "error", detail=repr(e))

    def _journal_io(self, what: str, stamp: WireStamp, data: dict[str, object]) -> None:
        self.voice.record(what, stamp, **data)

    # --- ECR ----------------------------------------------------------------------------------
    def _on_ecr(self, line: str, rx: WireStamp) -> str:
        """One ECR command (journaled as ``ecr_cmd`` when it arrived, the password masked)."""
        self.journal.record(self.name, "ecr_cmd", rx, line=_LOGIN_PASSWORD.sub(r"\1****", line))
        return self._ecr(line)

    def _ecr_replied(self, reply: str, tx: WireStamp) -> None:
        self.journal.record(self.name, "ecr_reply", tx, line=reply)

    def _ecr(self, line: str) -> str:
        parts = line.split()
        cmd = parts[0].upper()
        st = self.state
        if cmd == "STATUS":
            return f"OK {st}"
        if cmd == "CANCEL":
            self.txns.cancel()
            return "OK"
        if cmd in COMMANDS or cmd == "RESULT?":
            return self.txns.ecr(cmd, parts[1:])
        if cmd == "LOGIN":
            return self._ecr_login(parts[1:])
        if cmd == "SIGNON":
            if st is TerminalState.OFF:
                return "ERR 02 terminal off"
            if st is TerminalState.BOOTING:
                return "ERR 03 busy booting"
            if st is TerminalState.LOGIN:
                return "ERR 12 not logged in"
            if self.txns.busy:
                return "ERR 21 busy"
            if st is not TerminalState.SIGNON:  # READY / NOT_SIGNED_ON: sign on again
                self.state = TerminalState.SIGNON
                self._spawn(self._signon())
            return "OK SIGNON"
        return "ERR 01 unknown command"

    def _ecr_login(self, args: list[str]) -> str:
        st = self.state
        if st is TerminalState.OFF:
            return "ERR 02 terminal off"
        if len(args) != 2:
            return "ERR 04 usage: LOGIN <op> <pwd>"
        op = self.tcfg.operator
        if (args[0] != op.id or args[1] != op.password) and not self.quirk(
                "ignore_login", skipped="operator check", op=args[0]):
            if st is TerminalState.LOGIN:
                self.say("WARN", f"LOGIN fail op={args[0]}")
            return "ERR 11 bad operator"
        if st is TerminalState.BOOTING:
            return "ERR 03 busy booting"
        self._login.set()
        return "OK LOGIN"

    # --- helpers ------------------------------------------------------------------------------
    def _spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        if self._task is not None:
            self._task.cancel()
        task = asyncio.get_running_loop().create_task(coro)
        task.add_done_callback(self._task_done)
        self._task = task

    def _task_done(self, task: asyncio.Task[None]) -> None:
        if not task.cancelled() and task.exception() is not None:
            log.error("%s: terminal task crashed", self.name, exc_info=task.exception())

    async def _cancel(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(BaseException):
                await task

    def say(self, level: str, text: str, what: str | None = None, **data: object) -> None:
        """One console line, journaled when it left (see :meth:`rig.sim.parts.Voice.say`)."""
        self.voice.say(level, text, what, **data)

    def quirk(self, name: str, **data: object) -> bool:
        """Whether quirk ``name`` is on (journaling its effect when it is)."""
        return self.voice.quirk(name, **data)

    def _backoff_ms(self, i: int) -> float:
        b = self.sim.backoff_ms
        return b[min(i, len(b) - 1)] if b else 0.0
