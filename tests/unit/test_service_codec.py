"""What crosses the service API comes back as the same types and errors."""

from __future__ import annotations

import math

from hypothesis import given
from hypothesis import strategies as st

from rig.analysis.metrics import SignOn
from rig.analysis.sale_metrics import SaleResult
from rig.control.cardcheck import CardReport
from rig.control.recovery import Recovery
from rig.core.errors import Cancelled, LeaseError, ServiceError, TestError
from rig.faults.spec import FAULTS, HostReply, Latency, make_fault
from rig.service import codec


def test_results_round_trip_as_their_types():
    s = SignOn("T1", 3, True, boot_s=0.5, signon_req_s=0.6, signon_host_s=0.002, ready_s=0.7,
               attempts=1)
    assert codec.decode(codec.encode(s)) == s
    r = Recovery("T1", "host_down(for_s=5)", "signon", True, recover_s=1.5, attempts=2)
    assert codec.decode(codec.encode(r)) == r
    sale = SaleResult(terminal="T1", card="cup_debit", entry="chip", amount_minor=100,
                      outcome="approved", rc="00")
    back = codec.decode(codec.encode([sale]))[0]
    assert back == sale and isinstance(back, SaleResult)
    card = CardReport(reader="vpcd 0", atr="3B 00", aids=["A000000333010101"],
                      data_objects={"contact": {"pdol": None}}, seen={"contact": {"gpo": "8300"}})
    back_card = codec.decode(codec.encode(card))
    assert back_card == card and isinstance(back_card, CardReport)


def test_nan_becomes_none_and_plain_data_passes():
    assert codec.encode({"a": math.nan, "b": [1, 2.5, "x"]}) == {"a": None, "b": [1, 2.5, "x"]}


def test_faults_round_trip_with_their_windows():
    for f in (Latency(ms=300, jitter_ms=20, during="signon"),
              HostReply(rc="96", applies_to="signon", for_s=0.6)):
        assert codec.fault_from_wire(codec.fault_to_wire(f)) == f


@given(st.sampled_from(sorted(FAULTS)))
def test_every_fault_with_defaults_round_trips(name):
    try:
        f = make_fault(name)
    except TestError:
        return  # needs parameters
    assert codec.fault_from_wire(codec.fault_to_wire(f)) == f


def test_errors_come_back_as_their_class():
    for e in (LeaseError("T1 is leased by x"), TestError("bad"), Cancelled("T1: cancelled")):
        back = codec.error_from_wire(codec.error_to_wire(e))
        assert type(back) is type(e) and str(back) == str(e)
    odd = codec.error_from_wire({"error": "ValueError", "message": "boom"})
    assert isinstance(odd, ServiceError) and "ValueError: boom" in str(odd)
