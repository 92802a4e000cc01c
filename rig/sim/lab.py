"""VirtualLab: the SCPI power supply, the GRBL card robot, the card world and the virtual
terminals of one lab on one asyncio loop.

The loop runs in its own thread (``start()`` / ``stop()``) or in the foreground (``run()``,
until SIGINT / SIGTERM). The truth journal is appended to; each run is framed by entries
``lab_start`` / ``lab_stop`` (``terminal`` null), so readers can tell runs apart.
PSU channel N powers every terminal whose ``power`` names a PSU and channel N (several
terminals on one channel share it and their currents add up). With a ``robot:`` layout (and
its robot instrument) the lab serves a GRBL robot on ``sim.grbl_listen`` whose moves drive the
:class:`CardWorld`, which hands card events to the terminals with ``stations``. On
``sim.control_listen`` it serves the control port (:mod:`rig.sim.control`: card faults and
terminal quirks, JSON lines).

With ``sim.netns`` (root only) the lab first makes the network namespace ``sim.netns.name``
and, for terminal n, a veth pair ``<iface_prefix><n>`` (.n.1/30, here) <-> ``t<n>`` (.n.2/30,
in the namespace); the terminals dial their host connections from inside it, through the
veth, to their ``host_path`` (.n.1, where the rig runs the fault proxy). Console, ECR, PSU,
robot and control port stay where they are. ``stop()`` deletes the namespace (both veth ends
go with it), on SIGTERM / exit-with-parent too; one left by a killed lab is deleted at the
next start, one still used by a running lab is refused.
"""

from __future__ import annotations

import asyncio
import logging
import os
import random
import re
import signal
import subprocess
import threading
import time
from collections.abc import Coroutine
from pathlib import Path
from typing import Any, TypeVar

from ..config import LabConfig, SimNetns
from ..core import netns
from ..core.errors import InfrastructureError
from ..terminal_profiles import load_profile
from .control import ControlServer
from .grbl import GrblServer
from .journal import TruthJournal
from .lines import parse_hostport
from .psu import ScpiPsuServer
from .terminal import VirtualTerminal
from .wire import WireStamp
from .world import CardWorld, keypad_places

log = logging.getLogger(__name__)
T = TypeVar("T")

CAP_NET_ADMIN, CAP_SYS_ADMIN = 12, 21
NETNS_NEEDS_ROOT = "sim.netns needs root (CAP_NET_ADMIN, CAP_SYS_ADMIN)"
_OWNER = re.compile(r"posrig-lab pid=(\d+)")  # ifalias of the rig-side veths (a fault may
# prefix it with its own mark, rig-fault:...|, and gives it back when undone)


def _netns_capable() -> bool:
    """Whether this process may make namespaces and veths (CAP_NET_ADMIN + CAP_SYS_ADMIN)."""
    try:
        for line in open("/proc/self/status"):
            if line.startswith("CapEff:"):
                caps = int(line.split()[1], 16)
                return bool(caps >> CAP_NET_ADMIN & 1 and caps >> CAP_SYS_ADMIN & 1)
    except OSError:
        pass
    return os.geteuid() == 0


def _link_exists(ifname: str) -> bool:
    return os.path.exists(f"/sys/class/net/{ifname}")


def _owner_pid(ifname: str) -> int | None:
    try:
        with open(f"/sys/class/net/{ifname}/ifalias") as f:
            m = _OWNER.search(f.read())
    except OSError:
        return None
    return int(m.group(1)) if m else None


def _ip(*argv: str) -> None:
    r = subprocess.run(["ip", *argv], capture_output=True, text=True, timeout=10)
    if r.returncode != 0:
        raise InfrastructureError(f"ip {' '.join(argv)} failed: {r.stderr.strip() or r.returncode}")


def default_journal_path(cfg: LabConfig) -> Path:
    """``cfg.sim.truth_journal`` or ``results/<lab name>-truth.jsonl``."""
    return Path(cfg.sim.truth_journal or f"results/{cfg.name}-truth.jsonl")


class VirtualLab:
    """Fake hardware of one lab on loopback. Use as a context manager or start()/stop()."""

    def __init__(self, cfg: LabConfig, journal_path: str | None = None) -> None:
        self.cfg = cfg
        self.journal_path = Path(journal_path) if journal_path else default_journal_path(cfg)
        self.journal = TruthJournal(self.journal_path)
        sim = cfg.sim
        self.netns: SimNetns | None = sim.netns if cfg.virtual else None
        self._netns_made = False
        ns_name = self.netns.name if self.netns else None
        profiles = {name: load_profile(cfg.models[t.model].profile)
                    for name, t in cfg.terminals.items()}  # each emulates its model's profile
        self.terminals: dict[str, VirtualTerminal] = {
            name: VirtualTerminal(name, t, sim, self.journal, random.Random(f"{sim.seed}:{name}"),
                                  netns=ns_name, profile=profiles[name])
            for name, t in cfg.terminals.items()}
        self._by_channel: dict[int, list[VirtualTerminal]] = {}
        for name, t in cfg.terminals.items():
            if t.power.psu is None:
                log.warning("%s is powered by relay %s, which the virtual lab does not simulate; "
                            "it stays off", name, t.power.relay)
            elif t.power.channel > sim.psu_channels:
                log.warning("%s is on PSU channel %d but the virtual PSU has %d channels; it stays off",
                            name, t.power.channel, sim.psu_channels)
            else:
                self._by_channel.setdefault(t.power.channel, []).append(self.terminals[name])
        self.psu = ScpiPsuServer(channels=sim.psu_channels, model=sim.psu_model,
                                 on_power=self._on_power, load=self._load)
        self.world: CardWorld | None = None
        self.grbl: GrblServer | None = None
        layout = cfg.robot
        if layout is not None and getattr(cfg.instruments.get(layout.instrument), "kind", None) == "robot":
            stations = {n: t.stations for n, t in cfg.terminals.items() if t.stations is not None}
            self.world = CardWorld(layout, sim, stations, self.journal,
                                   keypads=keypad_places(stations, profiles))
            self.grbl = GrblServer(max_feed_mm_min=sim.robot_max_feed_mm_min,
                                   on_segment=self.world.on_segment, on_gripper=self.world.on_gripper,
                                   on_line=self._robot_line)
            for name in stations:
                self.terminals[name].world = self.world
                self.world.attach(name, self.terminals[name].card_event)
                self.world.attach_keys(name, self.terminals[name].key_press)
        self.control = ControlServer(self.terminals, self.world, self.journal)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()
        self._stopped = threading.Event()  # set when the loop thread ended
        self._closed = False
        self._announced = False  # lab_start journaled

    # --- wiring -------------------------------------------------------------------------------
    def _on_power(self, channel: int, powered: bool, volts: float) -> None:
        at = self.psu.line_rx  # the kernel's receive stamp of the SCPI line that switched it
        for t in self._by_channel.get(channel, ()):
            t.power(powered, volts, at)

    def _robot_line(self, text: str, rx: WireStamp) -> None:
        self.journal.record(None, "robot_line", rx, line=text)

    def _load(self, channel: int) -> float:
        return sum(t.load() for t in self._by_channel.get(channel, ()))

    def addresses(self) -> dict[str, str]:
        """Where everything listens: ``{"psu": "h:p", "robot": "h:p", "T1.console": "h:p", ...}``."""
        out = {"psu": f"{parse_hostport(self.cfg.sim.psu_listen)[0]}:{self.psu.port}"}
        if self.grbl is not None:
            out["robot"] = f"{parse_hostport(self.cfg.sim.grbl_listen)[0]}:{self.grbl.port}"
        if self.control.address:
            out["control"] = f"{self.control.address[0]}:{self.control.address[1]}"
        for name, t in self.terminals.items():
            for kind, srv in (("console", t.console), ("ecr", t.ecr)):
                if srv.address:
                    out[f"{name}.{kind}"] = f"{srv.address[0]}:{srv.address[1]}"
        return out

    @property
    def running(self) -> bool:
        """True between a successful ``start()`` and the loop thread's end."""
        return self._thread is not None and self._thread.is_alive() and not self._stopped.is_set()

    def state(self, terminal: str) -> str:
        """The terminal's state (``OFF``, ``BOOTING``, ``LOGIN``, ``SIGNON``, ``READY``...)."""
        return str(self.terminals[terminal].state)

    # --- running ------------------------------------------------------------------------------
    async def _astart(self) -> None:
        host, port = parse_hostport(self.cfg.sim.psu_listen)
        await self.psu.start(host, port)
        if self.grbl is not None:
            await self.grbl.start(*parse_hostport(self.cfg.sim.grbl_listen))
        if self.cfg.sim.control_listen:
            await self.control.start(*parse_hostport(self.cfg.sim.control_listen))
        if self.netns is not None:  # after the ports: a lab that cannot bind touches nothing
            self._make_netns()
        for t in self.terminals.values():
            await t.start()

    # --- sim.netns ----------------------------------------------------------------------------
    def _veths(self) -> list[tuple[str, str, str, str]]:
        """Per terminal (config order): rig-side veth, terminal-side veth, their addresses."""
        assert self.netns is not None
        ns = self.netns
        return [(ns.iface(n), f"t{n}", *ns.addresses(n))
                for n in range(1, len(self.terminals) + 1)]

    def _make_netns(self) -> None:
        """The namespace and one veth pair per terminal, up and addressed (root only)."""
        assert self.netns is not None
        name = self.netns.name
        if not _netns_capable():
            raise InfrastructureError(NETNS_NEEDS_ROOT)
        t0 = time.monotonic()
        veths = self._veths()
        for rig_if, *_ in veths:
            pid = _owner_pid(rig_if)
            if pid is not None and pid != os.getpid() and os.path.exists(f"/proc/{pid}"):
                raise InfrastructureError(
                    f"sim.netns: {rig_if} belongs to the virtual lab of pid {pid}, which still "
                    f"runs; stop it or give this lab another sim.netns name / iface_prefix")
        if netns.exists(name) or any(_link_exists(v[0]) for v in veths):
            log.warning("sim.netns: deleting namespace %s / veths %s* left by a lab that is gone",
                        name, self.netns.iface_prefix)
            self._drop_netns(leftover=True)
        netns.create(name)
        self._netns_made = True
        try:
            for rig_if, term_if, rig_ip, term_ip in veths:
                netns.add_veth(rig_if, term_if, netns=None, peer_netns=name,
                               addr=f"{rig_ip}/30", peer_addr=f"{term_ip}/30")
                _ip("link", "set", "dev", rig_if, "alias", f"posrig-lab pid={os.getpid()}")
        except BaseException:
            self._drop_netns()
            raise
        log.info("sim.netns: namespace %s with %s in %.0f ms", name,
                 ", ".join(f"{r}<->{t}" for r, t, *_ in veths), (time.monotonic() - t0) * 1e3)

    def _drop_netns(self, leftover: bool = False) -> None:
        """Delete the namespace and wait until the rig-side veths went with it (a few ms).

        ``leftover``: clean what a lab that is gone left; a link of that name that is not a
        lab's veth (no ``posrig-lab`` alias) is refused, never deleted."""
        if self.netns is None or not (self._netns_made or leftover):
            return
        self._netns_made = False
        netns.delete(self.netns.name)
        left = [v[0] for v in self._veths()]
        end = time.monotonic() + 2.0
        while (left := [i for i in left if _link_exists(i)]) and time.monotonic() < end:
            time.sleep(0.01)
        for ifname in left:  # its peer is elsewhere: delete this end, the pair goes with it
            if _owner_pid(ifname) is None:
                if leftover:
                    raise InfrastructureError(
                        f"sim.netns: interface {ifname} exists and is not a virtual lab's veth; "
                        f"give sim.netns another iface_prefix")
                continue
            try:
                _ip("link", "del", "dev", ifname)
            except InfrastructureError:
                if _link_exists(ifname):
                    raise

    async def _astop(self) -> None:
        for t in self.terminals.values():
            try:
                await t.stop()
            except Exception:
                log.exception("stopping %s", t.name)
        try:
            await self.psu.stop()
        except Exception:
            log.exception("stopping the PSU server")
        if self.grbl is not None:
            try:
                await self.grbl.stop()
            except Exception:
                log.exception("stopping the GRBL server")
        try:
            await self.control.stop()
        except Exception:
            log.exception("stopping the control port")

    def start(self, timeout_s: float = 10.0) -> VirtualLab:
        """Start the loop thread; returns once every server listens (raises if one cannot)."""
        with self._lock:
            if self._thread is not None:
                return self
            if self._closed:
                raise InfrastructureError(f"virtual lab {self.cfg.name!r} was stopped; make a new one")
            started = threading.Event()
            failure: list[BaseException] = []
            self._thread = threading.Thread(target=self._main, args=(started, failure),
                                            name=f"vlab-{self.cfg.name}", daemon=True)
            self._thread.start()
        if not started.wait(timeout_s):
            self.stop()
            raise InfrastructureError(f"virtual lab {self.cfg.name!r}: not listening after {timeout_s} s")
        if failure:
            self.stop()
            e = failure[0]
            hint = ("; is another lab (or anything else) using these ports?"
                    if isinstance(e, OSError) else "")
            raise InfrastructureError(f"virtual lab {self.cfg.name!r} cannot start: {e}{hint}") from e
        addresses = self.addresses()
        self._announced = True
        self.journal.record(None, "lab_start", lab=self.cfg.name, pid=os.getpid(), addresses=addresses)
        log.info("virtual lab %s listening: %s", self.cfg.name, addresses)
        return self

    def _main(self, started: threading.Event, failure: list[BaseException]) -> None:
        loop = asyncio.new_event_loop()
        self._loop = loop
        try:
            try:
                loop.run_until_complete(self._astart())
            except BaseException as e:
                failure.append(e)
                try:  # close what did start before start() hears of it (it stops the loop)
                    loop.run_until_complete(self._astop())
                finally:
                    started.set()
                return
            started.set()
            loop.run_forever()
            loop.run_until_complete(self._astop())
            pending = [t for t in asyncio.all_tasks(loop) if not t.done()]
            for t in pending:
                t.cancel()
            if pending:
                loop.run_until_complete(asyncio.wait(pending, timeout=2.0))
        finally:
            loop.close()
            self._stopped.set()

    def call(self, coro: Coroutine[Any, Any, T], timeout_s: float = 10.0) -> T:
        """Run a coroutine on the lab's loop from another thread and return its result."""
        if self._loop is None or not self._loop.is_running():
            raise InfrastructureError(f"virtual lab {self.cfg.name!r} is not running")
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result(timeout_s)

    def stop(self, timeout_s: float = 10.0) -> None:
        """Stop everything and close every port; safe to call twice."""
        with self._lock:
            thread, self._thread = self._thread, None
            self._closed = True
        if thread is not None:
            loop = self._loop
            if loop is not None and not loop.is_closed():
                try:
                    loop.call_soon_threadsafe(loop.stop)
                except RuntimeError:  # closed meanwhile
                    pass
            thread.join(timeout_s)
            if thread.is_alive():
                log.warning("virtual lab %s: loop thread did not stop within %s s", self.cfg.name, timeout_s)
            if self._announced:
                self.journal.record(None, "lab_stop", lab=self.cfg.name, pid=os.getpid())
        try:  # after the loop: the terminals' sockets in it are closed
            self._drop_netns()
        except Exception:
            log.exception("virtual lab %s: deleting network namespace %s", self.cfg.name,
                          self.netns.name if self.netns else None)
        self.journal.close()

    def run(self) -> None:
        """Start, then serve in the foreground until SIGINT / SIGTERM (or ``stop()``)."""
        self.start()
        stop = threading.Event()
        old: dict[int, Any] = {}
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGINT, signal.SIGTERM):
                old[sig] = signal.signal(sig, lambda *_: stop.set())
        try:
            while not stop.wait(0.2) and self.running:
                pass
        finally:
            for sig, handler in old.items():
                signal.signal(sig, handler)
            self.stop()

    def __enter__(self) -> VirtualLab:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
