"""PDU outlets switched through a pdudaemon server's HTTP API (pdudaemon 1.1, listener ``http``).

A lab with dozens of PDUs runs one pdudaemon (it owns the PDUs' own protocols: SNMP, telnet,
HTTP, serial...); the rig asks it ``GET <url>/power/control/<on|off>?hostname=<pdu>&port=<n>``.
pdudaemon queues the request on that PDU's runner (one job at a time per PDU), runs its driver,
retrying as its config says, and only then answers: ``200 OK - accepted request`` once the
driver returned, ``500 Invalid request`` for an unknown hostname / a bad request, or when every
retry failed.

So a switch is bracketed, not stamped: :meth:`PduDriver.switch` returns a
:class:`~rig.drivers.power_edge.PowerEdge` from right before the request left (``tx_ns``) to
right after the answer was read (``ack_ns``, a thread stamp; the stamp reported as power on/off).
The outlet switched somewhere inside, after pdudaemon's queue, its thread hop and the PDU's
own I/O, which is why the bracket is wide (milliseconds on loopback with a local driver; a
network PDU adds its round trips, a retry adds pdudaemon's ``retrydelay``). The PDU's relay
closes a little after its driver returns (its operate time, not observable), as with a relay
board. Each request is one ``PDU_IO`` event (request, port, HTTP status, the answer, its
duration).

Only a connection that was refused or never opened is retried (the request did not reach
pdudaemon); a timeout or a 500 is not: the job may still run, and pdudaemon retries the PDU
itself. pdudaemon has no authentication: keep its listener on loopback or a lab-only network.
"""

from __future__ import annotations

import logging
import threading
import time

import httpx

from ..config import PduConfig
from ..core.clock import ClockSource, Stamp, now
from ..core.errors import InstrumentError, TestError
from ..timeline.events import Event, EventKind, Sink
from .power_edge import PowerEdge

log = logging.getLogger(__name__)

CONTROL = "/power/control"


class PduDriver:
    """One PDU behind a pdudaemon server; thread-safe (one request at a time per PDU, as
    pdudaemon runs them). ``transport`` replaces the HTTP transport (tests)."""

    def __init__(self, name: str, cfg: PduConfig, sink: Sink, *,
                 transport: httpx.BaseTransport | None = None) -> None:
        self.name = name
        self.cfg = cfg
        self._sink = sink
        self._transport = transport
        self._lock = threading.Lock()
        self._client: httpx.Client | None = None
        self._commanded: dict[int, bool] = {}

    @property
    def who(self) -> str:
        return f"{self.name} ({self.cfg.hostname} via pdudaemon {self.cfg.url})"

    @property
    def _hint(self) -> str:
        return (f"is pdudaemon running with its HTTP listener on {self.cfg.url} "
                f"(daemon.listener \"http\" in its config, or --listener http)?")

    # --- connection --------------------------------------------------------------------------
    def open(self) -> PduDriver:
        """Check that pdudaemon answers: a request without a port, which it refuses with
        ``500 Invalid request`` and acts on nothing."""
        with self._lock:
            if self._client is None:
                self._client = httpx.Client(base_url=self.cfg.url, timeout=self.cfg.timeout_s,
                                            transport=self._transport)
            try:
                r = self._client.get(f"{CONTROL}/on", params={"hostname": self.cfg.hostname})
            except httpx.HTTPError as e:
                self._drop()
                raise InstrumentError(f"{self.who}: cannot reach pdudaemon: {_describe(e)}; "
                                      f"{self._hint}") from e
            if r.status_code != 500 or "invalid request" not in r.text.lower():
                self._drop()
                raise InstrumentError(f"{self.who}: a request without a port got HTTP "
                                      f"{r.status_code} {r.text.strip()[:80]!r}, not pdudaemon's "
                                      f"'500 Invalid request'; is {self.cfg.url} pdudaemon's "
                                      f"HTTP listener?")
            log.info("%s: pdudaemon answers", self.who)
        return self

    def close(self) -> None:
        with self._lock:
            self._drop()

    def __enter__(self) -> PduDriver:
        return self.open()

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _drop(self) -> None:
        client, self._client = self._client, None
        if client is not None:
            client.close()

    # --- switching ---------------------------------------------------------------------------
    def set(self, port: int, on: bool) -> Stamp:
        """Switch ``port``; returns the stamp of pdudaemon's answer."""
        return self.switch(port, on).stamp

    def switch(self, port: int, on: bool) -> PowerEdge:
        """Switch ``port`` on or off; the :class:`PowerEdge` from right before the request was
        sent to right after pdudaemon's answer was read (thread stamps)."""
        if isinstance(port, bool) or not isinstance(port, int) or port < 1 or (
                self.cfg.ports is not None and port > self.cfg.ports):
            top = self.cfg.ports or "n"
            raise TestError(f"{self.name}: no port {port!r} (it has 1..{top})")
        request = "on" if on else "off"
        params = {"hostname": self.cfg.hostname, "port": str(port)}
        with self._lock:
            for attempt in (1, 2):
                if self._client is None:
                    self._client = httpx.Client(base_url=self.cfg.url, timeout=self.cfg.timeout_s,
                                                transport=self._transport)
                tx_ns = time.monotonic_ns()
                try:
                    r = self._client.get(f"{CONTROL}/{request}", params=params)
                except httpx.HTTPError as e:
                    problem = f"{request} port {port}: {_describe(e)}"
                    self._record(request, port, tx_ns, error=problem)
                    self._drop()
                    if attempt == 1 and isinstance(e, httpx.ConnectError):
                        log.warning("%s: %s; reconnecting and retrying", self.who, problem)
                        continue
                    raise InstrumentError(f"{self.who}: {problem}; {self._hint}") from e
                stamp = now()
                text = r.text.strip()
                self._record(request, port, tx_ns, stamp, status=r.status_code, reply=text[:200])
                if r.status_code != 200:
                    raise InstrumentError(
                        f"{self.who}: {request} port {port} refused: HTTP {r.status_code} "
                        f"{text[:80]!r}; is {self.cfg.hostname!r} in pdudaemon's pdus: and port "
                        f"{port} right? pdudaemon also answers so when every retry of the PDU "
                        f"failed: its log says which")
                self._commanded[port] = bool(on)
                log.debug("%s: port %d %s in %.1f ms", self.name, port, request,
                          (stamp.mono_ns - tx_ns) / 1e6)
                return PowerEdge.acknowledged(tx_ns, stamp, ClockSource.THREAD)
        raise AssertionError("unreachable")

    def commanded(self, port: int) -> bool | None:
        """The state this driver last had acknowledged for ``port`` (None: never); pdudaemon
        has no query."""
        return self._commanded.get(port)

    def _record(self, request: str, port: int, tx_ns: int, stamp: Stamp | None = None,
                **data: object) -> None:
        stamp = stamp or now()
        self._sink.record(Event.at(stamp, EventKind.PDU_IO, self.name, clock=ClockSource.THREAD,
                                   request=request, hostname=self.cfg.hostname, port=port,
                                   elapsed_us=(stamp.mono_ns - tx_ns) // 1000, **data))


def _describe(e: httpx.HTTPError) -> str:
    if isinstance(e, httpx.ConnectError):
        return f"connection failed ({e})"
    if isinstance(e, httpx.TimeoutException):
        return f"no answer within the timeout ({type(e).__name__})"
    if isinstance(e, httpx.RemoteProtocolError):
        return f"not an HTTP answer ({e})"
    return f"{type(e).__name__}: {e}"
