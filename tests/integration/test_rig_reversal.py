"""Host faults through the whole chain: a timed-out sale stores a reversal that the terminal
sends before its next sale; a MAC error (A0) makes the terminal sign on again."""

from __future__ import annotations

import time

import pytest

from rig import open_local
from rig.config import HostOverride
from rig.timeline.events import EventKind
from tests.labcfg import virtual_config, write_config

pytestmark = pytest.mark.integration


def test_timeout_then_reversal_then_a0_resignon(tmp_path):
    cfg = virtual_config(tmp_path, time_scale=0.1, auth_timeout_ms=400)
    path = write_config(cfg, tmp_path / "lab.yaml")
    with open_local(path, results=tmp_path / "r") as rig:
        rig.ensure_ready("T1")
        rig.host.rules.set_delay_ms("T1", 1500)  # longer than the terminal waits
        r = rig.sale("T1", amount="3.00", card="cup_debit", entry="chip")
        assert (r.outcome, r.rc) == ("failed", "98")
        rig.host.rules.set_delay_ms("T1", None)
        r2 = rig.sale("T1", amount="1.00", card="cup_debit", entry="chip")
        assert r2.approved
        events = rig.cycle("T1").snapshot()  # the second sale's cycle
        kinds = [e.kind for e in events if e.kind in (EventKind.REVERSAL_REQ, EventKind.AUTH_REQ)]
        assert kinds[:2] == [EventKind.REVERSAL_REQ, EventKind.AUTH_REQ]  # reversal goes first
        # a forced A0: the terminal declines and signs on again by itself
        rig.host.rules.add_override(HostOverride(terminal="T1", rc="A0"))
        r3 = rig.sale("T1", amount="1.00", card="cup_debit", entry="chip")
        assert (r3.outcome, r3.rc) == ("declined", "A0")
        rig.host.rules.clear()
        end = time.monotonic() + 10
        while time.monotonic() < end and not rig.ecrs["T1"].command("STATUS").startswith("READY"):
            time.sleep(0.05)
        assert rig.ecrs["T1"].command("STATUS").startswith("READY")
        signons = rig.store.query("SELECT count(*) FROM events WHERE kind='signon_req' "
                                  "AND terminal='T1'")[0][0]
        assert signons >= 2  # the boot sign-on and the one A0 forced
        assert rig.sale("T1", amount="1.00", card="cup_debit", entry="tap").approved
