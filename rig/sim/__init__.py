"""The virtual lab: fake hardware on loopback speaking the rig's real wire protocols.

Imports only the shared core (config, clock, errors, iso8583, cards, redact, netstamp), never
the controller.
"""

from __future__ import annotations

from .journal import TruthJournal, read_journal
from .lab import VirtualLab, default_journal_path
from .terminal import TerminalState, VirtualTerminal
from .world import CardWorld

__all__ = ["CardWorld", "TerminalState", "TruthJournal", "VirtualLab", "VirtualTerminal", "default_journal_path",
           "read_journal"]
