"""The rig's acquirer host (controller side): answers terminals' ISO 8583 network messages."""

from .rules import ResponseRules
from .server import AcquirerHost
from .state import HostState, HostStates

__all__ = ["AcquirerHost", "HostState", "HostStates", "ResponseRules"]
