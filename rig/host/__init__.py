"""The rig's acquirer host (controller side): answers terminals' ISO 8583 network and
financial messages."""

from .accounts import Accounts, Ledger, TxnRecord
from .rules import HostFaultSpec, ResponseRules
from .server import AcquirerHost
from .state import HostState, HostStates
from .txn import TxnOutcome, TxnProcessor

__all__ = ["Accounts", "AcquirerHost", "HostFaultSpec", "HostState", "HostStates", "Ledger",
           "ResponseRules", "TxnOutcome", "TxnProcessor", "TxnRecord"]
