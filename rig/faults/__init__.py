"""Faults: network (L4 proxy, L3 kernel), host, power, card and robot — timed, recorded, undone.

``from rig.faults import Latency, HostNoResponse, PowerDropout`` gives the fault classes
(:mod:`rig.faults.spec`); ``rig.fault(terminal, fault)`` applies one, ``rig.control.sale(...,
faults=[...])`` and ``rig.control.recovery(...)`` time them to the terminal's phases.
"""

from .spec import (
    FAULTS,
    PHASES,
    Bandwidth,
    Blackhole,
    Brownout,
    CardBadLrc,
    CardCorrupt,
    CardMute,
    CloseAfter,
    ExpiredCard,
    Fault,
    HostBadMac,
    HostClose,
    HostDelay,
    HostDown,
    HostGarbage,
    HostNoResponse,
    HostReply,
    HostSlowSignon,
    InsertShallow,
    Latency,
    LinkDown,
    LinkFlap,
    Loss,
    Netem,
    PowerDropout,
    Rate,
    Refuse,
    Reject,
    Reset,
    RobotAlarm,
    Slicer,
    SlowClose,
    SlowRamp,
    Stall,
    SwipeTooFast,
    fault_from_dict,
    make_fault,
)

__all__ = [
    "FAULTS", "PHASES", "Bandwidth", "Blackhole", "Brownout", "CardBadLrc", "CardCorrupt",
    "CardMute", "CloseAfter", "ExpiredCard", "Fault", "HostBadMac", "HostClose", "HostDelay",
    "HostDown", "HostGarbage", "HostNoResponse", "HostReply", "HostSlowSignon", "InsertShallow",
    "Latency", "LinkDown", "LinkFlap", "Loss", "Netem", "PowerDropout", "Rate", "Refuse",
    "Reject", "Reset", "RobotAlarm", "Slicer", "SlowClose", "SlowRamp", "Stall", "SwipeTooFast",
    "fault_from_dict", "make_fault",
]
