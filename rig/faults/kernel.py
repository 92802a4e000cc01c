"""L3 network faults in the kernel: nftables loss / blackhole / reject, link down / flap, tbf
rate and netem, on a rig interface or inside a named network namespace.

Every change carries a mark so that a later rig can find and undo what a crashed one left:
nftables tables are named ``rig_<name>`` (family inet, with a comment saying what and who),
links taken down get the ifalias ``rig-fault:down|<previous alias>`` (``rig-fault:flap|…``
while flapping), qdiscs use the root handle ``7269:`` ("ri"). :meth:`KernelFaults.sweep`
removes every one of them in its namespace.

nftables is driven through the ``nft`` command with the whole ruleset on stdin (``nft -f -``,
one atomic transaction) and ``nft -j`` to read: the libnftables Python binding
(python3-nftables) is a distro package that a virtualenv cannot import, and pyroute2's
nftables module is too low level for numgen / reject expressions. Links and qdiscs go
through pyroute2 (netlink).

Parameters are checked before anything is touched: a bad value raises
:class:`FaultParamError` (a :class:`~rig.core.errors.TestError` and a ``ValueError``). A feature
the kernel lacks (``sch_netem``) raises :class:`NotSupported`, an
:class:`~rig.core.errors.InfrastructureError`: the rig's own kernel cannot do it, the test is fine.
"""

from __future__ import annotations

import errno
import ipaddress
import itertools
import json
import logging
import math
import os
import re
import shutil
import subprocess
import threading
import time
from collections.abc import Callable
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from rig.core import netns as _netns
from rig.core.clock import Stamp, now
from rig.core.errors import InfrastructureError, TestError

log = logging.getLogger(__name__)

TABLE_PREFIX = "rig_"
LINK_MARK = "rig-fault:"
QDISC_MAJOR = 0x7269  # "ri": every root qdisc the rig adds has the handle 7269:
QDISC_HANDLE = QDISC_MAJOR << 16
TC_H_ROOT = 0xFFFFFFFF
CAP_NET_ADMIN = 12
NEEDS_ADMIN = "needs root or CAP_NET_ADMIN"
PRIORITY = "filter - 10"  # before the usual filter chains; a drop in any base chain is final

_FAULT_NAME = re.compile(r"[A-Za-z0-9_]{1,48}")
_IFNAME = re.compile(r"[A-Za-z0-9_.+-]{1,15}")
_HANDLE = re.compile(r"(nft|link|flap|rate|netem):(.+)")
_probe_seq = itertools.count()


class NotSupported(InfrastructureError):
    """The kernel lacks what the fault needs (e.g. ``sch_netem``); nothing was changed."""


class FaultParamError(TestError, ValueError):
    """A fault parameter is invalid; raised before anything was changed."""


def _number(what: str, v: Any, lo: float, hi: float, *, lo_open: bool = False) -> float:
    if isinstance(v, bool) or not isinstance(v, int | float) or not math.isfinite(v):
        raise FaultParamError(f"{what} must be a finite number, got {v!r}")
    if v < lo or v > hi or (lo_open and v == lo):
        left = "(" if lo_open else "["
        raise FaultParamError(f"{what} must be in {left}{lo:g}, {hi:g}], got {v!r}")
    return float(v)


def _check_ifname(iface: Any) -> str:
    if not isinstance(iface, str) or not _IFNAME.fullmatch(iface) or iface in (".", ".."):
        raise FaultParamError(
            f"invalid interface name {iface!r} (1-15 characters: letters, digits, _ . + -)")
    return iface


def _check_fault_name(name: Any) -> str:
    if not isinstance(name, str) or not _FAULT_NAME.fullmatch(name):
        raise FaultParamError(
            f"invalid fault name {name!r}: 1-48 characters from [A-Za-z0-9_] "
            f"(it names the nftables table rig_<name>)")
    return name


@dataclass(frozen=True)
class Match:
    """Which traffic a filter fault hits. At least one of iface / addr / port.

    ``addr`` is the terminal's IP (or a network): source on the way in, destination on the
    way out. ``port`` is the rig-side TCP/UDP port (the terminal's fault proxy or the host):
    destination port on the way in, source port on the way out. ``direction`` "in" is
    terminal -> rig, "out" rig -> terminal (nftables hooks input + forward, output + forward).
    """

    iface: str | None = None
    addr: str | None = None
    port: int | None = None
    direction: Literal["in", "out", "both"] = "both"

    def __post_init__(self) -> None:
        if self.iface is None and self.addr is None and self.port is None:
            raise FaultParamError("Match needs at least one of iface, addr, port")
        if self.iface is not None:
            _check_ifname(self.iface)
        if self.addr is not None:
            try:
                if not isinstance(self.addr, str):
                    raise ValueError
                ipaddress.ip_network(self.addr, strict=False)
            except ValueError:
                raise FaultParamError(f"Match.addr {self.addr!r} is not an IP address") from None
        if self.port is not None and (isinstance(self.port, bool) or not isinstance(self.port, int)
                                      or not 0 < self.port < 65536):
            raise FaultParamError(f"Match.port must be an integer in [1, 65535], got {self.port!r}")
        if self.direction not in ("in", "out", "both"):
            raise FaultParamError(f"Match.direction must be in, out or both, got {self.direction!r}")

    def nft(self, way: Literal["in", "out"]) -> str:
        """The nftables match expression for one way."""
        parts = []
        if self.iface:
            parts.append(f'{"iifname" if way == "in" else "oifname"} "{self.iface}"')
        if self.addr:
            net = ipaddress.ip_network(self.addr, strict=False)
            fam = "ip" if net.version == 4 else "ip6"
            one = net.num_addresses == 1
            parts.append(f'{fam} {"saddr" if way == "in" else "daddr"} '
                         f"{net.network_address if one else net}")
        if self.port:
            parts.append(f'meta l4proto {{ tcp, udp }} th {"dport" if way == "in" else "sport"} '
                         f"{self.port}")
        return " ".join(parts)

    def describe(self) -> str:
        return " ".join(f"{k}={v}" for k, v in (("iface", self.iface), ("addr", self.addr),
                                                ("port", self.port), ("dir", self.direction)) if v)


@dataclass(frozen=True)
class KernelCaps:
    nft: bool
    net_admin: bool
    netem: bool
    tbf: bool
    reason: str  # what is missing and how to get it; "all present" when nothing is


@dataclass
class FaultRecord:
    """One fault's life: on/off edges on the rig's clock and how long each change took."""

    handle: str
    kind: str  # loss blackhole reject link_down flap rate netem
    detail: str
    on: Stamp
    setup_ns: int
    off: Stamp | None = None
    teardown_ns: int | None = None
    edges: list[tuple[str, Stamp]] = field(default_factory=list)  # flap: ("down"|"up", when)


# --- probing ----------------------------------------------------------------------------------

_caps_lock = threading.Lock()
_caps: dict[str | None, KernelCaps] = {}
_qdisc_caps: tuple[bool, bool, str] | None = None


def _has_net_admin() -> bool:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("CapEff:"):
                return bool(int(line.split()[1], 16) >> CAP_NET_ADMIN & 1)
    except OSError:
        pass
    return os.geteuid() == 0


def _kernel_config(option: str) -> str | None:
    """'y' / 'm' / 'n' for a kernel option from /proc/config.gz, None when unknown."""
    import gzip

    try:
        text = gzip.open("/proc/config.gz", "rt").read()
    except OSError:
        return None
    m = re.search(rf"^{option}=(\w)", text, re.M)
    return m.group(1) if m else "n"


def _probe_qdiscs() -> tuple[bool, bool, str]:
    """(netem, tbf, how it was found), tried on a veth in a throwaway namespace.

    Adding a qdisc of an absent kind makes the kernel try to load its module, so this is the
    honest test; config / sysfs are only read when no namespace can be made.
    """
    ns = f"rigprobe{os.getpid()}_{next(_probe_seq)}"
    try:
        _netns.create(ns)
    except Exception as e:
        found = {}
        for kind, opt in (("netem", "CONFIG_NET_SCH_NETEM"), ("tbf", "CONFIG_NET_SCH_TBF")):
            cfg = _kernel_config(opt)
            found[kind] = (Path(f"/sys/module/sch_{kind}").exists() or cfg in ("y", "m"))
        return found["netem"], found["tbf"], (
            f"not tried (no throwaway netns: {e}); inferred from /proc/config.gz and /sys/module")
    try:
        from pyroute2 import IPRoute
        from pyroute2.netlink.exceptions import NetlinkError

        _netns.add_veth("p0", "p1", netns=ns, peer_netns=ns)
        result = {}
        with IPRoute(netns=ns, flags=0, groups=0, ext_ack=True) as ipr:
            for kind, ifname, kw in (("netem", "p0", {"delay": 1000}),
                                     ("tbf", "p1", {"rate": "1mbit", "burst": 32768,
                                                    "latency": 50000})):
                idx = ipr.link_lookup(ifname=ifname)[0]
                try:
                    ipr.tc("add", kind, index=idx, handle=QDISC_HANDLE, **kw)
                    result[kind] = (True, "")
                except NetlinkError as e:
                    result[kind] = (False, str(e.args[-1]) if e.args else str(e))
        how = "; ".join(f"{k}: kernel says {m!r}" for k, (ok, m) in result.items() if not ok)
        return result["netem"][0], result["tbf"][0], how or "tried on a veth in a throwaway netns"
    finally:
        _netns.delete(ns)


def probe(netns: str | None = None, *, refresh: bool = False) -> KernelCaps:
    """What this process can do to the kernel in ``netns`` (None: here). Cached.

    netem / tbf are tried for real on a veth in a throwaway namespace (the qdisc kinds are the
    kernel's, not the namespace's); nft is tried with ``nft list tables`` inside ``netns``.
    """
    global _qdisc_caps
    with _caps_lock:
        if not refresh and netns in _caps:
            return _caps[netns]
        missing: list[str] = []
        admin = _has_net_admin()
        if not admin:
            missing.append(f"CAP_NET_ADMIN: this process {NEEDS_ADMIN} (run as root, or "
                           "setcap cap_net_admin+ep on the interpreter)")
        nft = shutil.which("nft") is not None
        if not nft:
            missing.append("nft: the nft command is missing (apt-get install nftables)")
        elif admin:
            if netns is not None and not _netns.exists(netns):  # not cached: may appear later
                raise InfrastructureError(f"network namespace {netns!r} does not exist "
                                          "(ip netns list)")
            else:
                r = subprocess.run(_netns.command(netns, ["nft", "list", "tables"]),
                                   capture_output=True, text=True, timeout=10)
                if r.returncode != 0:
                    nft = False
                    missing.append(f"nft: 'nft list tables' failed: {r.stderr.strip()} (kernel "
                                   "needs CONFIG_NF_TABLES and CONFIG_NF_TABLES_INET)")
        if admin and (refresh or _qdisc_caps is None):
            _qdisc_caps = _probe_qdiscs()
        if admin:
            netem, tbf, how = _qdisc_caps  # type: ignore[misc]
        else:
            netem = tbf = False
            how = "qdiscs not tried without CAP_NET_ADMIN"
        if admin and not netem:
            missing.append(
                f"sch_netem: this kernel has no netem qdisc ({how}); load it with "
                "'modprobe sch_netem' (Debian/Ubuntu ship it in linux-modules-extra-$(uname -r)) "
                "or use a kernel built with CONFIG_NET_SCH_NETEM; the L4 fault proxy still "
                "does latency / jitter")
        if admin and not tbf:
            missing.append(f"sch_tbf: this kernel has no tbf qdisc ({how}); 'modprobe sch_tbf' "
                           "or CONFIG_NET_SCH_TBF")
        caps = KernelCaps(nft=nft, net_admin=admin, netem=netem, tbf=tbf,
                          reason="; ".join(missing) or "all present")
        _caps[netns] = caps
        log.info("kernel fault caps in %s: %s", netns or "this netns", caps)
        return caps


# --- link marks -------------------------------------------------------------------------------

def _mark(kind: str, previous: str | None) -> str:
    if previous and previous.startswith(LINK_MARK):  # a leftover: keep the original alias
        previous = _unmark(previous)
    return f"{LINK_MARK}{kind}|{previous or ''}"[:250]


def _unmark(alias: str) -> str:
    return alias.split("|", 1)[1] if "|" in alias else ""


# --- the faults -------------------------------------------------------------------------------

class KernelFaults:
    """Apply and undo kernel faults in one network namespace (``netns`` None: the current one).

    Nothing is touched until a fault is asked for. Use as a context manager (``undo_all`` on
    exit); after a crash, :meth:`sweep` in a new one removes the leftovers.
    """

    def __init__(self, netns: str | None = None) -> None:
        if netns is not None:
            _netns.check_name(netns)
        self.netns = netns
        self.records: list[FaultRecord] = []
        self._lock = threading.RLock()
        self._active: dict[str, FaultRecord] = {}
        self._aliases: dict[str, str] = {}  # link handle -> alias to restore
        self._flaps: dict[str, tuple[threading.Thread, threading.Event]] = {}
        self._ipr: Any = None

    # -- plumbing (the only places that touch the kernel) --------------------------------------

    @property
    def where(self) -> str:
        return f"netns {self.netns!r}" if self.netns else "this network namespace"

    def _ready(self, *, nft: bool = False) -> KernelCaps:
        if self.netns is not None and not _netns.exists(self.netns):
            raise InfrastructureError(f"network namespace {self.netns!r} does not exist "
                                      "(ip netns list)")
        caps = probe(self.netns)
        if not caps.net_admin:
            raise InfrastructureError(f"kernel faults in {self.where}: {caps.reason}")
        if nft and not caps.nft:
            raise InfrastructureError(f"kernel faults need nftables: {caps.reason}")
        return caps

    def _nft(self, script: str, *args: str) -> str:
        argv = _netns.command(self.netns, ["nft", *args] if args else ["nft", "-f", "-"])
        r = subprocess.run(argv, input=script if not args else None, capture_output=True,
                           text=True, timeout=15)
        if r.returncode != 0:
            err = r.stderr.strip()
            if "Operation not permitted" in err:
                raise InfrastructureError(f"nft in {self.where}: {NEEDS_ADMIN} ({err})")
            raise InfrastructureError(f"nft in {self.where} failed: {err}\n--- ruleset:\n{script}")
        return r.stdout

    def _iproute(self) -> Any:
        if self._ipr is None:
            self._ipr = self._open_iproute()
        return self._ipr

    def _open_iproute(self) -> Any:
        from pyroute2 import IPRoute

        if self.netns is None:
            return IPRoute(groups=0, ext_ack=True)
        # flags=0: never create the namespace (pyroute2's default would make a typo a new one)
        return IPRoute(netns=self.netns, flags=0, groups=0, ext_ack=True)

    def _netlink(self, what: str, fn, *args, **kwargs):
        from pyroute2.netlink.exceptions import NetlinkError

        try:
            return fn(*args, **kwargs)
        except NetlinkError as e:
            msg = str(e.args[-1]) if e.args else str(e)
            if e.code == errno.EPERM:
                raise InfrastructureError(f"{what} in {self.where}: {NEEDS_ADMIN}") from e
            raise InfrastructureError(f"{what} in {self.where} failed: {msg}") from e

    def _link(self, iface: str) -> dict:
        ipr = self._iproute()
        links = self._netlink("list links", ipr.get_links)
        for link in links:
            if link.get_attr("IFLA_IFNAME") == iface:
                return link
        have = ", ".join(sorted(x.get_attr("IFLA_IFNAME") for x in links))
        raise FaultParamError(f"no interface {iface!r} in {self.where} (there are: {have})")

    def _set_link(self, ipr: Any, index: int, **kw: Any) -> None:
        self._netlink(f"ip link set {kw}", ipr.link, "set", index=index, **kw)

    def _root_qdisc(self, index: int) -> dict | None:
        for q in self._netlink("list qdiscs", self._iproute().get_qdiscs, index=index):
            if q["parent"] == TC_H_ROOT:
                return q
        return None

    # -- bookkeeping ---------------------------------------------------------------------------

    @contextmanager
    def _setup(self, handle: str, kind: str, detail: str):
        if handle in self._active:
            raise FaultParamError(f"{handle} is already active ({self._active[handle].detail}); "
                                  "undo it first")
        t0 = time.monotonic_ns()
        yield
        setup = time.monotonic_ns() - t0
        rec = FaultRecord(handle, kind, detail, now(), setup)
        self._active[handle] = rec
        self.records.append(rec)
        log.info("kernel fault on: %s (%s) in %s, %.1f ms", kind, detail, self.where, setup / 1e6)

    def timings(self) -> dict[str, dict[str, list[float]]]:
        """Per fault kind: set-up and tear-down times in ms, in the order they happened."""
        out: dict[str, dict[str, list[float]]] = {}
        for r in self.records:
            d = out.setdefault(r.kind, {"setup_ms": [], "teardown_ms": []})
            d["setup_ms"].append(r.setup_ns / 1e6)
            if r.teardown_ns is not None:
                d["teardown_ms"].append(r.teardown_ns / 1e6)
        return out

    # -- nftables faults -----------------------------------------------------------------------

    def _table(self, name: str, kind: str, match: Match, verdicts: list[str], detail: str) -> str:
        table = TABLE_PREFIX + name
        handle = f"nft:{name}"
        ways = ("in", "out") if match.direction == "both" else (match.direction,)
        chains = {"c_in": ("input", ["in"]), "c_fwd": ("forward", list(ways)),
                  "c_out": ("output", ["out"])}
        comment = f'comment "posrig {kind} pid={os.getpid()} {detail}";'
        lines = [f"table inet {table} {{"]
        for chain, (hook, hook_ways) in chains.items():
            rules = [f"    {match.nft(w)} {v}".rstrip() for w in hook_ways if w in ways
                     for v in verdicts]
            if not rules:
                continue
            lines += [f"  chain {chain} {{",
                      f"    type filter hook {hook} priority {PRIORITY}; policy accept;",
                      *rules, "  }"]
        body = "\n".join([*lines, "}", ""])
        with self._lock, self._setup(handle, kind, detail):
            self._ready(nft=True)
            if match.iface:
                self._link(match.iface)
            # "create" fails (and with it the whole transaction) if a crashed rig left the
            # table; only then replace it, atomically. Deleting a table costs ~10 ms (the
            # kernel waits for an RCU grace period), so the usual path does not.
            try:
                self._nft(f"create table inet {table} {{ {comment} }}\n{body}")
            except InfrastructureError as e:
                if "File exists" not in str(e):
                    raise
                self._nft(f"table inet {table}\ndelete table inet {table}\n"
                          f"create table inet {table} {{ {comment} }}\n{body}")
        return handle

    def loss(self, name: str, percent: float, match: Match) -> str:
        """Drop ``percent`` % of the matched packets (0.01 % steps), each way independently."""
        _check_fault_name(name)
        p = _number("loss percent", percent, 0, 100, lo_open=True)
        k = round(p * 100)
        if k < 1:
            raise FaultParamError(f"loss percent {percent!r} is below the 0.01 % resolution")
        _check_match(match)
        verdict = "drop" if k >= 10000 else f"numgen random mod 10000 < {k} drop"
        return self._table(name, "loss", match, [verdict], f"{p:g}% {match.describe()}")

    def blackhole(self, name: str, match: Match) -> str:
        """Drop every matched packet silently (connections stall, then time out)."""
        _check_fault_name(name)
        _check_match(match)
        return self._table(name, "blackhole", match, ["drop"], match.describe())

    def reject(self, name: str, match: Match) -> str:
        """Answer matched packets with a TCP reset (other protocols: ICMP port unreachable)."""
        _check_fault_name(name)
        _check_match(match)
        return self._table(name, "reject", match,
                           # the resets this table sends pass its own output hook first
                           ["meta l4proto tcp @th,104,8 & 0x04 == 0x04 accept",
                            "meta l4proto tcp reject with tcp reset",
                            "reject with icmpx type port-unreachable"], match.describe())

    # -- links ---------------------------------------------------------------------------------

    def link_down(self, iface: str) -> str:
        """Take ``iface`` administratively down, marked ``rig-fault:down`` for the sweep."""
        _check_ifname(iface)
        handle = f"link:{iface}"
        with self._lock:
            self._no_link_fault(iface)
            with self._setup(handle, "link_down", iface):
                self._ready()
                link = self._link(iface)
                alias = link.get_attr("IFLA_IFALIAS") or ""
                ipr = self._iproute()
                self._set_link(ipr, link["index"], ifalias=_mark("down", alias))
                self._set_link(ipr, link["index"], state="down")
                self._aliases[handle] = _unmark(_mark("down", alias))
        return handle

    def flap(self, iface: str, down_s: float, up_s: float) -> str:
        """Toggle ``iface`` down ``down_s`` / up ``up_s`` from a background thread until undone.

        Down shows at once; the kernel passes carrier-up on to the peer at most once a second
        (linkwatch), so an up phase shorter than ~1 s may never be seen from the other end.
        """
        _check_ifname(iface)
        down = _number("flap down_s", down_s, 0, 3600, lo_open=True)
        up = _number("flap up_s", up_s, 0, 3600, lo_open=True)
        handle = f"flap:{iface}"
        with self._lock:
            self._no_link_fault(iface)
            with self._setup(handle, "flap", f"{iface} down {down:g} s / up {up:g} s"):
                self._ready()
                link = self._link(iface)
                alias = link.get_attr("IFLA_IFALIAS") or ""
                self._set_link(self._iproute(), link["index"], ifalias=_mark("flap", alias))
                self._aliases[handle] = _unmark(_mark("flap", alias))
                if up < 1.0:
                    log.warning("flap %s: up phases of %.2f s are shorter than the kernel's 1 s "
                                "linkwatch limit; the peer may see the link mostly down", iface, up)
                ipr = self._open_iproute()  # the flapper's own: handles stay in one thread
                edges: list[tuple[str, Stamp]] = []
                stop = threading.Event()
                t = threading.Thread(target=self._flapper,
                                     args=(ipr, link["index"], down, up, stop, edges),
                                     name=f"flap-{iface}", daemon=True)
                t.start()
                self._flaps[handle] = (t, stop)
            self._active[handle].edges = edges
        return handle

    def _flapper(self, ipr: Any, index: int, down: float, up: float, stop: threading.Event,
                 edges: list[tuple[str, Stamp]]) -> None:
        try:
            while not stop.is_set():
                ipr.link("set", index=index, state="down")
                edges.append(("down", now()))
                if stop.wait(down):
                    break
                ipr.link("set", index=index, state="up")
                edges.append(("up", now()))
                stop.wait(up)
        except Exception:
            log.exception("flap on link %d in %s stopped", index, self.where)
        finally:
            try:
                ipr.link("set", index=index, state="up")
                edges.append(("up", now()))
            except Exception:
                pass
            ipr.close()

    def _no_link_fault(self, iface: str) -> None:
        for h in (f"link:{iface}", f"flap:{iface}"):
            if h in self._active:
                raise FaultParamError(f"{iface} already has {h} active; undo it first")

    # -- qdiscs --------------------------------------------------------------------------------

    def rate(self, iface: str, kbit: float, burst_kb: float = 32, latency_ms: float = 50) -> str:
        """Shape what leaves ``iface`` to ``kbit`` kbit/s (root tbf, handle 7269:)."""
        _check_ifname(iface)
        k = _number("rate kbit", kbit, 0, 34_000_000, lo_open=True)
        b = _number("rate burst_kb", burst_kb, 0, 1_000_000, lo_open=True)
        lat = _number("rate latency_ms", latency_ms, 0, 60_000, lo_open=True)
        rate_bps, burst = k * 125, int(b * 1024)
        if burst / rate_bps > 250:  # tbf's buffer is a u32 of 1/15.625 us ticks
            raise FaultParamError(f"rate: a {b:g} KB burst takes {burst / rate_bps:.0f} s to drain "
                                  f"at {k:g} kbit/s (max 250 s); lower burst_kb")
        detail = f"{iface} {k:g} kbit/s burst {b:g} KB latency {lat:g} ms"
        return self._qdisc("rate", iface, detail, "tbf", {
            "rate": f"{round(k * 1000)}bit", "burst": burst, "latency": round(lat * 1000)},
            min_burst=burst)

    def netem(self, iface: str, delay_ms: float = 0, jitter_ms: float = 0, loss: float = 0,
              reorder: float = 0, corrupt: float = 0, duplicate: float = 0) -> str:
        """netem on what leaves ``iface``; NotSupported where the kernel has no sch_netem."""
        _check_ifname(iface)
        d = _number("netem delay_ms", delay_ms, 0, 60_000)
        j = _number("netem jitter_ms", jitter_ms, 0, 60_000)
        pct = {k: _number(f"netem {k}", v, 0, 100) for k, v in
               (("loss", loss), ("reorder", reorder), ("corrupt", corrupt),
                ("duplicate", duplicate))}
        if j and not d:
            raise FaultParamError("netem jitter_ms needs delay_ms > 0")
        if pct["reorder"] and not d:
            raise FaultParamError("netem reorder needs delay_ms > 0 (reordered packets skip it)")
        if not d and not any(pct.values()):
            raise FaultParamError("netem with nothing to do: give delay_ms, loss, reorder, "
                                  "corrupt or duplicate")
        detail = f"{iface} delay {d:g}±{j:g} ms " + " ".join(f"{k} {v:g}%" for k, v in pct.items()
                                                             if v)
        caps = self._ready()
        if not caps.netem:
            raise NotSupported(f"netem on {iface} in {self.where}: {caps.reason}")
        return self._qdisc("netem", iface, detail, "netem", {
            "delay": round(d * 1000), "jitter": round(j * 1000), "loss": pct["loss"],
            "prob_reorder": pct["reorder"], "prob_corrupt": pct["corrupt"],
            "duplicate": pct["duplicate"]})

    def _qdisc(self, kind: str, iface: str, detail: str, qdisc: str, params: dict,
               min_burst: int | None = None) -> str:
        handle = f"{kind}:{iface}"
        with self._lock:
            other = "netem" if kind == "rate" else "rate"
            if f"{other}:{iface}" in self._active:
                raise FaultParamError(f"{iface} already has {other} active (one root qdisc per "
                                      "link); undo it first")
            with self._setup(handle, kind, detail):
                self._ready()
                link = self._link(iface)
                mtu = link.get_attr("IFLA_MTU") or 1500
                if min_burst is not None and min_burst < mtu + 14:
                    raise FaultParamError(f"rate: burst {min_burst} B is smaller than one frame "
                                          f"on {iface} (MTU {mtu} + 14)")
                root = self._root_qdisc(link["index"])
                if root is not None and root["handle"] not in (0, QDISC_HANDLE):
                    raise FaultParamError(
                        f"{iface} has a root qdisc {root.get_attr('TCA_KIND')} "
                        f"{root['handle'] >> 16:x}: the rig did not add; remove it first")
                self._netlink(f"tc qdisc replace dev {iface} root {qdisc}", self._iproute().tc,
                              "replace", qdisc, index=link["index"], handle=QDISC_HANDLE,
                              **params)
        return handle

    # -- undo ----------------------------------------------------------------------------------

    def undo(self, handle: str) -> None:
        """Undo one fault; a handle already undone (or from a crashed rig) is cleaned if left."""
        m = _HANDLE.fullmatch(handle) if isinstance(handle, str) else None
        if not m:
            raise TestError(f"not a kernel fault handle: {handle!r}")
        what, target = m.groups()
        (_check_fault_name if what == "nft" else _check_ifname)(target)
        with self._lock:
            rec = self._active.get(handle)
            t0 = time.monotonic_ns()
            if self.netns is not None and not _netns.exists(self.netns):
                # the namespace is gone and took its tables, links and qdiscs with it
                if handle in self._flaps:
                    self._flaps.pop(handle)[1].set()
                self._aliases.pop(handle, None)
            elif what == "nft":
                if rec is None and not any(r.handle == handle for r in self.records):
                    self._ready(nft=True)  # not ours: clean what a crashed rig left
                table = TABLE_PREFIX + target
                self._nft(f"table inet {table}\ndelete table inet {table}\n")
            elif what in ("link", "flap"):
                if rec is None:
                    self._ready()
                if handle in self._flaps:
                    t, stop = self._flaps.pop(handle)
                    stop.set()
                    t.join(10)
                self._restore_link(target, self._aliases.pop(handle, None))
            else:
                if rec is None:
                    self._ready()
                self._drop_qdisc(target)
            if rec is not None:
                rec.teardown_ns = time.monotonic_ns() - t0
                rec.off = now()
                del self._active[handle]
                log.info("kernel fault off: %s (%s) in %s, %.1f ms", rec.kind, rec.detail,
                         self.where, rec.teardown_ns / 1e6)

    def _restore_link(self, iface: str, alias: str | None) -> bool:
        """Bring ``iface`` up and give back its alias if the rig marked it; True if it did."""
        try:
            link = self._link(iface)
        except FaultParamError:
            return False  # the link is gone (its namespace or peer was deleted)
        current = link.get_attr("IFLA_IFALIAS") or ""
        if alias is None and not current.startswith(LINK_MARK):
            return False
        ipr = self._iproute()
        self._set_link(ipr, link["index"], state="up")
        self._set_link(ipr, link["index"],
                       ifalias=alias if alias is not None else _unmark(current))
        return True

    def _drop_qdisc(self, iface: str) -> str | None:
        try:
            link = self._link(iface)
        except FaultParamError:
            return None
        root = self._root_qdisc(link["index"])
        if root is None or root["handle"] >> 16 != QDISC_MAJOR:
            return None
        self._netlink(f"tc qdisc del dev {iface} root", self._iproute().tc, "del",
                      index=link["index"], handle=root["handle"], root=True)
        return root.get_attr("TCA_KIND")

    def undo_all(self) -> None:
        """Undo every active fault, newest first; the first error is raised after trying all."""
        first: BaseException | None = None
        with self._lock:
            for handle in reversed(list(self._active)):
                try:
                    self.undo(handle)
                except Exception as e:
                    log.error("undo %s in %s failed: %s", handle, self.where, e)
                    first = first or e
        if first is not None:
            raise first

    def close(self) -> None:
        """Undo everything and release the netlink handle."""
        try:
            self.undo_all()
        finally:
            if self._ipr is not None:
                self._ipr.close()
                self._ipr = None

    def __enter__(self) -> KernelFaults:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- sweep ---------------------------------------------------------------------------------

    def sweep(self, keep: Callable[[str], bool] | None = None) -> list[str]:
        """Remove every rig mark in this namespace (``rig_*`` tables, marked links, 7269:
        qdiscs), this object's faults included; one line per thing undone. ``keep(table)``
        spares the nft tables it returns True for (those of rigs that still run)."""
        done: list[str] = []
        with self._lock:
            self._ready()
            for t, stop in list(self._flaps.values()):
                stop.set()
                t.join(10)
            self._flaps.clear()
            if probe(self.netns).nft:
                tables = json.loads(self._nft("", "-j", "list", "tables") or "{}")
                names = [(t["table"]["family"], t["table"]["name"])
                         for t in tables.get("nftables", []) if "table" in t
                         and t["table"]["name"].startswith(TABLE_PREFIX)
                         and not (keep and keep(t["table"]["name"]))]
                if names:
                    text = self._nft("", "list", "ruleset")
                    self._nft("".join(f"delete table {f} {n}\n" for f, n in names))
                    for f, n in names:
                        c = re.search(rf'table {f} {n} {{\n\s*comment "([^"]*)"', text)
                        done.append(f"nft: deleted table {f} {n}" + (f" ({c.group(1)})" if c else ""))
            for link in self._netlink("list links", self._iproute().get_links):
                ifname = link.get_attr("IFLA_IFNAME")
                alias = link.get_attr("IFLA_IFALIAS") or ""
                if alias.startswith(LINK_MARK):
                    self._restore_link(ifname, None)
                    done.append(f"link {ifname}: set up, mark {alias.split('|')[0]!r} cleared")
                kind = self._drop_qdisc(ifname)
                if kind:
                    done.append(f"qdisc {kind} {QDISC_MAJOR:x}: on {ifname}: deleted")
            now_ = now()
            for rec in self._active.values():
                rec.off = now_
            self._active.clear()
            self._aliases.clear()
        for line in done:
            log.warning("kernel sweep in %s: %s", self.where, line)
        return done


def _check_match(match: Any) -> Match:
    if not isinstance(match, Match):
        raise FaultParamError(f"match must be a rig.faults.kernel.Match, got {match!r}")
    return match
