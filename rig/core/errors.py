"""Error classes (after LAVA): say who failed, what happened and what to do next."""


class RigError(Exception):
    """Base of every error posrig raises on purpose."""


class InfrastructureError(RigError):
    """The rig's own equipment (instrument, host, robot, lab) is unreachable or broken."""


class InstrumentError(InfrastructureError):
    """An instrument did not answer, answered wrongly, or reported an error."""


class LimitError(RigError):
    """A command would exceed a configured safety limit; nothing was sent."""


class TerminalError(RigError):
    """The device under test misbehaved (did not boot, did not sign on...)."""


class ConfigError(RigError):
    """A configuration file is invalid; the message names file, line and field."""


class ProtocolError(RigError):
    """A peer sent bytes that do not follow the protocol; the message names peer and message."""


class TestError(RigError):
    """The test itself is wrong (unknown terminal, bad arguments)."""

    __test__ = False  # not a pytest test class


class Cancelled(KeyboardInterrupt):
    """A procedure was asked to stop (Ctrl-C, ``rig.stop()``, its client went away).

    A KeyboardInterrupt, so a notebook's interrupt and a cancel end a run the same way."""


class LeaseError(TestError):
    """A terminal is leased by another client; the message names the holder, note and since."""


class ServiceError(InfrastructureError):
    """The rig service cannot be reached, or it died while serving a call."""
