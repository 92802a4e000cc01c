"""When a power output switched, and how surely: the edge a PSU or relay driver reports."""

from __future__ import annotations

from dataclasses import dataclass

from ..core.clock import ClockSource, Stamp


@dataclass(frozen=True, slots=True)
class PowerEdge:
    """One switch of a power output (on or off), bracketed by the command and its acknowledgement.

    - ``tx_ns``: CLOCK_MONOTONIC ns taken by the driver thread right *before* the command's
      write began. Nothing can switch before the command leaves, so this is a hard lower
      bound, also when the thread loses the GIL inside the write (a stamp taken after the
      write returned could then be later than the switch).
    - ``ack_ns``: when the acknowledgement arrived: for a PSU the reply that confirms the
      switch (``*OPC?`` sent in the same message as ``OUTP``, or the read-back for dialects
      without ``*OPC?``), with the kernel's receive stamp of its last segment on a LAN
      instrument (``clock`` is then ``kernel``). A PSU answers only once the output has
      switched, so this is an upper bound. A relay board never answers: ``ack_ns`` is right
      after ``flush()`` returned (the frame left the host).
    - ``stamp`` (with ``clock``, who took it): what the rig reports as "power on/off": the
      acknowledgement, ``stamp.mono_ns == ack_ns``. So ``tx_ns <= stamp.mono_ns == ack_ns``,
      and ``bracket_ns = ack_ns - tx_ns`` is its uncertainty, one-sided: the output switched
      at most ``bracket_ns`` before ``stamp``, never after it; a figure measured from this
      stamp (``boot_s``, ``ready_s``...) is short by at most ``bracket_ns``.

    Why the acknowledgement: the virtual PSU switches when it has read and parsed the command,
    which on loopback is p50 ~0.3 ms after ``tx_ns`` and ~0.1 ms before ``ack_ns`` (its own
    event loop, not the wire, dominates); a real PSU parses, switches and only then answers
    ``*OPC?``, so its switch also sits at the late end of the bracket. The kernel's receive
    stamp does not move when a Python thread hogs the GIL; the TX stamp and a midpoint would
    (docs/timing.md has the measurements).

    A relay is the exception: its contact closes *after* ``ack_ns`` (the 4-byte frame's time
    on the serial line, then the relay's operate time, neither observable), so for a relay
    the bracket is only the frame's way out of the host and ``stamp`` is early, not late.
    """

    stamp: Stamp
    clock: ClockSource
    tx_ns: int
    ack_ns: int

    @property
    def bracket_ns(self) -> int:
        """``ack_ns - tx_ns``: how far before ``stamp`` the output may have switched."""
        return self.ack_ns - self.tx_ns

    @classmethod
    def acknowledged(cls, tx_ns: int, ack: Stamp, clock: ClockSource) -> PowerEdge:
        """The edge of a command written from ``tx_ns`` and acknowledged at ``ack`` (taken by
        ``clock``); the stamp is the acknowledgement."""
        return cls(ack, clock, tx_ns, ack.mono_ns)
