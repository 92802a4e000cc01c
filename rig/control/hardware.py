"""What the procedures work with: the lab's config, drivers, injector, recorder and store.

The bench (:mod:`rig.control.bench`) opens these and hands one :class:`Hardware` to every
procedure; procedures never see the bench or the client.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from ..config import LabConfig
from ..core.clock import Stamp
from ..drivers.console import ConsoleReader
from ..drivers.ecr import EcrDriver
from ..drivers.pdu import PduDriver
from ..drivers.psu import PsuDriver
from ..drivers.relay import RelayDriver
from ..faults.inject import Injector
from ..faults.power import PowerPath
from ..faults.schedule import Windows
from ..timeline.events import Event, EventKind
from ..timeline.recorder import Recorder
from ..timeline.store import Store


@dataclass
class Hardware:
    cfg: LabConfig
    store: Store
    recorder: Recorder
    psus: dict[str, PsuDriver] = field(default_factory=dict)
    relays: dict[str, RelayDriver] = field(default_factory=dict)
    pdus: dict[str, PduDriver] = field(default_factory=dict)
    robot: Any = None
    consoles: dict[str, ConsoleReader] = field(default_factory=dict)
    ecrs: dict[str, EcrDriver] = field(default_factory=dict)
    injector: Injector | None = None
    windows: Windows | None = None

    def power_path(self, terminal: str) -> PowerPath:
        p = self.cfg.terminals[terminal].power
        if p.psu:
            return PowerPath("psu", self.psus[p.psu], p.outlet, nominal_v=p.voltage)
        if p.pdu:
            return PowerPath("pdu", self.pdus[p.pdu], p.outlet)
        assert p.relay
        return PowerPath("relay", self.relays[p.relay], p.outlet)

    def switch(self, terminal: str, on: bool) -> Stamp:
        """Switch the terminal's power and record POWER_ON / POWER_OFF with the edge's bracket
        (command TX → acknowledgement RX) so each figure carries its uncertainty.

        ``edge`` in the event says what the stamp is: ``ack`` (a PSU's acknowledgement, after
        the switch), ``sent`` (a relay frame left the host, before the contact closes) or
        ``pdudaemon`` (pdudaemon's HTTP answer: coarse, the switch lies in the bracket)."""
        p = self.cfg.terminals[terminal].power
        extra: dict[str, object] = {}
        if p.psu:
            psu = self.psus[p.psu]
            if on:
                assert p.voltage is not None and p.current_limit is not None
                psu.set_voltage(p.outlet, p.voltage)
                psu.set_current(p.outlet, p.current_limit)
            edge = psu.switch(p.outlet, on)
            src, extra["edge"] = p.psu, "ack"
        elif p.pdu:
            edge = self.pdus[p.pdu].switch(p.outlet, on)
            src, extra["edge"] = p.pdu, "pdudaemon"
            extra["port"] = p.outlet
        else:
            assert p.relay
            edge = self.relays[p.relay].switch(p.outlet, on)
            src, extra["edge"] = p.relay, "sent"
        kind = EventKind.POWER_ON if on else EventKind.POWER_OFF
        self.recorder.record(Event.at(edge.stamp, kind, src, terminal, clock=edge.clock,
                                      channel=p.outlet, volts=p.voltage if on else 0.0,
                                      tx_ns=edge.tx_ns, ack_ns=edge.ack_ns,
                                      bracket_ns=edge.bracket_ns, **extra))
        return edge.stamp
