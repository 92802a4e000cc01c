"""One online exchange of a virtual terminal: a MAC'd request, the matching response.

A fresh connection per exchange (:class:`rig.sim.hostlink.HostLink`); the request is stamped
with the kernel's transmit stamp of its last segment, the response with the kernel's receive
stamp of its last segment (``thread`` where the kernel gives none). Outcomes: ``ok`` (a reply), ``refused`` (no connection: nothing
was sent), ``timeout`` / ``closed`` (sent, no reply), ``protocol`` (an unusable reply).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from dataclasses import dataclass

from ..core.errors import ProtocolError
from ..iso8583 import ConnectionClosed, cup_txn, frame, get_dialect
from ..iso8583.dialects import Message, response_mti
from .hostlink import HostLink, RxFrame
from .wire import WireStamp

log = logging.getLogger(__name__)
CUP = get_dialect("cup")


@dataclass(frozen=True, slots=True)
class Reply:
    msg: Message
    rx: RxFrame
    mac_ok: bool


async def exchange(host: str, port: int, msg: Message, *, mak8: bytes, timeout_s: float,
                   on_sent: Callable[[WireStamp], None],
                   before_send: Callable[[], None] | None = None,
                   netns: str | None = None) -> tuple[str, Reply | None]:
    """Send ``msg`` with its MAC and wait ``timeout_s`` for the reply: (outcome, reply).

    ``netns``: the network namespace to connect from (None: this one)."""
    try:
        link = await asyncio.wait_for(HostLink.open(host, port, netns), timeout_s)
    except (TimeoutError, OSError) as e:
        log.info("cannot reach the host %s:%d: %s", host, port, e)
        return "refused", None
    try:
        body = CUP.encode(msg, mak=mak8)
        if before_send is not None:
            before_send()
        on_sent(await link.send(frame(body)))
        want, stan = response_mti(str(msg["t"])), msg.get("11")
        rx, rsp = await asyncio.wait_for(_reply(link, want, stan), timeout_s)
        return "ok", Reply(rsp, rx, mac_ok(rx.body, rsp, mak8))
    except TimeoutError:
        return "timeout", None
    except ConnectionClosed:
        return "closed", None
    except ProtocolError as e:
        log.info("bad reply from %s:%d: %s", host, port, e)
        return "protocol", None
    except OSError:
        return "closed", None
    finally:
        link.close()


async def _reply(link: HostLink, mti: str, stan: object) -> tuple[RxFrame, Message]:
    while True:
        rx = await link.read_frame()
        rsp = CUP.decode(rx.body)
        if rsp.get("t") == mti and rsp.get("11") == stan:
            return rx, rsp
        log.info("ignoring %s stan=%s while waiting for %s", rsp.get("t"), rsp.get("11"), mti)


def mac_ok(body: bytes, rsp: Message, mak8: bytes) -> bool:
    """A reply must carry a valid MAC when approved; a decline may come without one."""
    if "64" not in rsp:
        return str(rsp.get("39", "")).strip() != cup_txn.APPROVED
    with contextlib.suppress(ProtocolError):
        return CUP.verify_mac(body, mak8)
    return False
