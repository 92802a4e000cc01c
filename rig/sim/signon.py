"""One sign-on exchange of a virtual terminal: connect, send 0800, read 0810, check keys.

Every I/O boundary is reported through ``on_io(what, stamp, data)``: the connect stamped by the
loop's thread right after it returned, the 0800 with the kernel's transmit stamp of its last
segment, the 0810 with the kernel's receive stamp of its last segment (each
:class:`rig.sim.wire.WireStamp` says its clock; see :mod:`rig.sim.hostlink`), so the caller can
write its truth journal without re-stamping.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from ..core.errors import ProtocolError
from ..iso8583 import framing, get_dialect, keys
from .hostlink import HostLink
from .wire import WireStamp, thread_stamp

log = logging.getLogger(__name__)

OnIo = Callable[[str, WireStamp, dict[str, Any]], None]

# Terminal-side result codes for failures that carry no host response code.
RC_NO_RESPONSE = "98"  # timeout / connection closed without a reply (as CUP terminals show it)
RC_NO_CONNECTION = "NC"  # connect refused or unreachable
RC_PROTOCOL = "PE"  # unparseable frame, wrong MTI or STAN
RC_KEY_ERROR = "KE"  # field 62 missing, wrong length or KCV mismatch


@dataclass(frozen=True, slots=True)
class SignonOutcome:
    """``ok`` with the working keys, or the code and reason of the failure."""

    ok: bool
    rc: str
    reason: str  # ok | refused | timeout | closed | rc | protocol | kcv
    keys: keys.WorkingKeys | None = None
    detail: str = ""


async def exchange(host: str, port: int, request: dict[str, Any], *, tmk: bytes, key_mode: str,
                   timeout_s: float, on_io: OnIo, netns: str | None = None) -> SignonOutcome:
    """Run one 0800/0810 exchange over a fresh TCP connection, closed afterwards (made inside
    network namespace ``netns`` when given, see :meth:`HostLink.open`)."""
    dialect = get_dialect("cup")
    stan = str(request.get("11", ""))
    try:
        link = await asyncio.wait_for(HostLink.open(host, port, netns), timeout_s)
    except TimeoutError:
        return SignonOutcome(False, RC_NO_RESPONSE, "timeout", detail="connect timed out")
    except OSError as e:
        return SignonOutcome(False, RC_NO_CONNECTION, "refused", detail=str(e))
    on_io("host_connect", thread_stamp(), {"peer": link.peer, "local": link.local})
    try:
        sent = await link.send(framing.frame(dialect.encode(request)))
        on_io("signon_req_sent", sent, {"stan": stan, "key_mode": key_mode})
        try:
            rx = await asyncio.wait_for(link.read_frame(), timeout_s)
        except TimeoutError:
            return SignonOutcome(False, RC_NO_RESPONSE, "timeout", detail="no 0810 in time")
        except framing.ConnectionClosed:
            return SignonOutcome(False, RC_NO_RESPONSE, "closed", detail="host closed the connection")
        try:
            rsp = dialect.decode(rx.body)
        except ProtocolError as e:
            on_io("signon_rsp_received", rx.stamp,
                  {"stan": stan, "rc": None, "error": str(e)})
            return SignonOutcome(False, RC_PROTOCOL, "protocol", detail=str(e))
        rc = str(rsp.get("39", "")).strip()
        on_io("signon_rsp_received", rx.stamp, {"stan": str(rsp.get("11", "")), "rc": rc})
        return _check(rsp, rc, stan, tmk, key_mode)
    except (ProtocolError, OSError) as e:
        return SignonOutcome(False, RC_PROTOCOL if isinstance(e, ProtocolError) else RC_NO_RESPONSE,
                             "protocol" if isinstance(e, ProtocolError) else "closed", detail=str(e))
    finally:
        link.close()


def _check(rsp: dict[str, Any], rc: str, stan: str, tmk: bytes, key_mode: str) -> SignonOutcome:
    if rsp.get("t") != "0810":
        return SignonOutcome(False, RC_PROTOCOL, "protocol", detail=f"got MTI {rsp.get('t')}, not 0810")
    if str(rsp.get("11", stan)) != stan:
        return SignonOutcome(False, RC_PROTOCOL, "protocol",
                             detail=f"0810 STAN {rsp.get('11')} does not match {stan}")
    if rc != "00":
        return SignonOutcome(False, rc or RC_PROTOCOL, "rc", detail=f"host answered rc={rc}")
    f62 = rsp.get("62")
    if not isinstance(f62, bytes | bytearray):
        return SignonOutcome(False, RC_KEY_ERROR, "kcv", detail="0810 without field 62")
    try:
        wk = keys.decode_field62(tmk, bytes(f62), key_mode)
    except ProtocolError as e:
        return SignonOutcome(False, RC_KEY_ERROR, "kcv", detail=str(e))
    return SignonOutcome(True, "00", "ok", keys=wk)
