"""The virtual lab: fake hardware on loopback speaking the rig's real wire protocols.

Imports only the shared core (config, clock, errors, iso8583, redact), never the controller.
"""

from __future__ import annotations

from .journal import TruthJournal, read_journal
from .lab import VirtualLab, default_journal_path
from .terminal import TerminalState, VirtualTerminal

__all__ = ["TerminalState", "TruthJournal", "VirtualLab", "VirtualTerminal", "default_journal_path",
           "read_journal"]
