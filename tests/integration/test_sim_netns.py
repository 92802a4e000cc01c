"""sim.netns: the virtual terminals dial their host from a network namespace of the lab's own,
through one veth pair each, so L3 kernel faults on ``net_iface`` / ``net_addr`` act on their
real traffic end to end. Needs root (skips without it, fails under CI=true)."""

from __future__ import annotations

import itertools
import json
import os
import subprocess
import time
from pathlib import Path

import pytest

from rig import open_local
from rig.config import load_lab
from rig.core import netns
from rig.core.errors import InfrastructureError
from rig.faults import LinkDown, Rate, Reject
from rig.sim.lab import NETNS_NEEDS_ROOT, VirtualLab
from rig.timeline.events import EventKind
from tests import truth
from tests.labcfg import VIRTUAL_YAML, virtual_config, write_config
from tests.netnsfix import require_netadmin

pytestmark = pytest.mark.integration
_seq = itertools.count()


def _ns_opts() -> dict[str, str]:
    """A namespace, veth prefix and subnet no other test (or pytest process) uses now."""
    pid, n = os.getpid(), next(_seq)
    return {"name": f"rln{pid}_{n}", "iface_prefix": f"rl{pid % 10**6}_{n}",
            "subnet": f"10.{100 + pid % 100}.0.0/16"}


def _octets(ns: dict[str, str]) -> str:
    return ns["subnet"].rsplit(".", 2)[0]  # "10.1xx"


def _link(ifname: str, ns: str | None = None) -> dict:
    argv = ["ip", *(["-n", ns] if ns else []), "-j", "addr", "show", "dev", ifname]
    return json.loads(subprocess.run(argv, capture_output=True, text=True, check=True).stdout)[0]


def _root_qdisc(ifname: str) -> str | None:
    out = subprocess.run(["tc", "-j", "qdisc", "show", "dev", ifname], capture_output=True,
                         text=True, check=True).stdout
    return next((f"{q['kind']} {q['handle']}" for q in json.loads(out) if q.get("root")), None)


def _gone(ns: dict[str, str], terminals: int = 4) -> bool:
    return not netns.exists(ns["name"]) and not any(
        Path(f"/sys/class/net/{ns['iface_prefix']}{n}").exists() for n in range(1, terminals + 1))


@pytest.fixture
def lab(tmp_path):
    require_netadmin()
    ns = _ns_opts()
    # auth_timeout_ms bounds the rejected sale's wait (see the note at the Reject sale)
    cfg = virtual_config(tmp_path, proxies=True, time_scale=0.3, auth_timeout_ms=2000, netns=ns)
    yield cfg, ns
    if not _gone(ns):  # a failed test must not leave the namespace behind
        netns.delete(ns["name"])
        pytest.fail(f"namespace {ns['name']} or its veths outlived the rig")


# --- config (no root needed) ------------------------------------------------------------------

def test_config_gives_each_terminal_its_veth_address_and_proxy_address(tmp_path):
    cfg = load_lab(VIRTUAL_YAML, overrides={"sim": {"netns": {"iface_prefix": "rlx"}},
                                            "terminals": {"T3": {"net_iface": "eth9"}}})
    got = {n: (t.net_iface, t.net_addr, t.host_path) for n, t in cfg.terminals.items()}
    assert got == {"T1": ("rlx1", "10.78.1.2", "10.78.1.1:15901"),
                   "T2": ("rlx2", "10.78.2.2", "10.78.2.1:15902"),
                   "T3": ("eth9", "10.78.3.2", "10.78.3.1:15903"),  # set: kept
                   "T4": ("rlx4", "10.78.4.2", "10.78.4.1:15904")}
    # what the rig writes for its child lab reads back the same
    again = load_lab(write_config(cfg, tmp_path / "lab.json"))
    assert again.terminals == cfg.terminals and again.sim.netns == cfg.sim.netns
    dflt = load_lab(VIRTUAL_YAML, overrides={"sim": {"netns": True}}).sim.netns
    assert dflt is not None and (dflt.name, dflt.iface_prefix, dflt.subnet) == (
        "riglab", "rlab", "10.78.0.0/16")
    bench = load_lab(VIRTUAL_YAML, overrides={"virtual": False, "sim": {"netns": True}})
    assert bench.terminals["T1"].host_path == "127.0.0.1:15901"  # a bench is left alone


def test_lab_without_the_capabilities_says_what_it_needs(tmp_path, monkeypatch):
    ns = _ns_opts()
    cfg = virtual_config(tmp_path, netns=ns)
    monkeypatch.setattr("rig.sim.lab._netns_capable", lambda: False)
    lab = VirtualLab(cfg)
    with pytest.raises(InfrastructureError, match=r"sim\.netns needs root") as e:
        lab.start()
    assert NETNS_NEEDS_ROOT in str(e.value) and "ports" not in str(e.value)
    assert not netns.exists(ns["name"])


# --- the lab behind veths (root) ---------------------------------------------------------------

def test_signon_and_sale_go_through_the_veth_and_the_namespace_goes_with_the_rig(lab, tmp_path):
    cfg, ns = lab
    net = _octets(ns)
    with open_local(cfg, results=tmp_path) as rig:
        rig_if = _link(f"{ns['iface_prefix']}1")
        assert {"local": f"{net}.1.1", "prefixlen": 30} in [
            {k: a[k] for k in ("local", "prefixlen")} for a in rig_if["addr_info"]]
        assert [a["local"] for a in _link("t1", ns["name"])["addr_info"]
                if a["family"] == "inet"] == [f"{net}.1.2"]
        rig.power_cycle("T1")
        s = rig.wait_signon("T1")
        assert s.ok, s
        # the terminal's socket lives in the namespace: it leaves from t1's address to the
        # fault proxy on the rig side of the veth
        conn = [e for e in truth.read(rig.journal_path)
                if e.get("terminal") == "T1" and e["what"] == "host_connect"][-1]
        assert conn["local"].startswith(f"{net}.1.2:")
        assert conn["peer"] == cfg.terminals["T1"].host_path == (
            f"{net}.1.1:{cfg.terminals['T1'].host_path.rsplit(':', 1)[1]}")
        # through the veth the kernel still stamps both ways
        last = {e["what"]: e for e in truth.read(rig.journal_path) if e.get("terminal") == "T1"}
        assert last["signon_req_sent"]["clock"] == "kernel_tx"
        assert last["signon_rsp_received"]["clock"] == "kernel_rx"
        # a sale dials from the namespace as well: a reject on t1's path (rlab1 + .1.2 + the
        # proxy port) stops its 0200; from the lab's own namespace it would pass. (Today the
        # rig's Reject, direction both, also drops its own resets on the way out, so the
        # connect waits auth_timeout_ms instead of being refused at once: NC either way.)
        r = rig.sale("T1", "1.00", "cup_debit", entry="chip", faults=[Reject(during="auth")])
        assert (r.outcome, r.rc) == ("failed", "NC"), r
        assert rig.sale("T1", "1.00", "cup_debit", entry="chip").outcome == "approved"
    assert _gone(ns)


def test_link_down_during_signon_the_terminal_retries_and_recovers(lab, tmp_path):
    cfg, ns = lab
    with open_local(cfg, results=tmp_path) as rig:
        rig.power_cycle("T1")
        assert rig.wait_signon("T1").ok
        # Longer than the sign-on timeout (3 s, not scaled): shorter, the first attempt's SYN
        # just waits and goes through when the link is back (for_s=2: READY 0.27 s after it).
        t0 = time.monotonic()
        rec = rig.recovery("T1", LinkDown(for_s=4), during="signon")
        took = time.monotonic() - t0
        assert rec.recovered, rec
        assert rec.fault_held_s == pytest.approx(4.0, abs=0.3)
        assert rec.recover_s is not None and 0 < rec.recover_s < 3, rec
        assert rec.remedy is None  # it came back by itself
        # none of the 0800s got through while the link was down: the terminal's first attempt
        # timed out on the way (console SIGNON fail), its retry went through once it was back
        assert rec.host_requests == 1 and rec.attempts >= 2, rec
        rig.recorder.flush()
        fails = rig.store.query(
            "SELECT data_json FROM events WHERE run_id=? AND terminal='T1' AND kind=? "
            "AND cycle_id=?", (rig.run_id, str(EventKind.SIGNON_FAIL), rec.cycle))
        assert len(fails) >= 1
        tried = [e for e in truth.read(rig.journal_path) if e.get("terminal") == "T1"
                 and e["what"] == "signon_fail"]
        assert tried and tried[-1]["reason"] in ("timeout", "refused"), tried[-1:]
        print(f"\nLinkDown(for_s=4) during sign-on: recover_s={rec.recover_s:.2f} "
              f"host-seen 0800s={rec.host_requests} terminal attempts={rec.attempts} "
              f"held={rec.fault_held_s:.2f} s, whole recovery {took:.1f} s")
        assert "rig-fault" not in _link(f"{ns['iface_prefix']}1").get("ifalias", "")
    assert _gone(ns)


def test_rate_on_the_terminal_link_and_signon_still_works(lab, tmp_path):
    cfg, ns = lab
    ifname = f"{ns['iface_prefix']}1"
    with open_local(cfg, results=tmp_path) as rig:
        with rig.fault("T1", Rate(kbit=64)):
            assert _root_qdisc(ifname) == "tbf 7269:"
            rig.power_cycle("T1")
            s = rig.wait_signon("T1")
            assert s.ok, s
        assert _root_qdisc(ifname) != "tbf 7269:"
        rig.power_cycle("T1")
        base = rig.wait_signon("T1")
        print(f"\nRate(kbit=64): sign-on host round trip {s.signon_host_s:.4f} s, ready "
              f"{s.ready_s:.3f} s (without: {base.signon_host_s:.4f} s, {base.ready_s:.3f} s)")
    assert _gone(ns)
