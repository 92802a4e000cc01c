"""posrig: hardware-in-the-loop rig controller for payment terminals.

    from rig import open_rig
    rig = open_rig("configs/labs/virtual.yaml")
    rig.power_cycle("T1"); rig.wait_signon("T1")
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"
__all__ = ["Rig", "SignOn", "open_rig", "open_local", "load_run", "__version__"]

if TYPE_CHECKING:
    from .analysis.load import load_run
    from .analysis.metrics import SignOn
    from .client import Rig, open_rig
    from .control.bench import open_local


def __getattr__(name: str) -> Any:  # lazy: `import rig.sim` must not pull in the controller
    if name in ("Rig", "open_rig"):
        from . import client

        return getattr(client, name)
    if name == "open_local":
        from .control.bench import open_local

        return open_local
    if name == "SignOn":
        from .analysis.metrics import SignOn

        return SignOn
    if name == "load_run":
        from .analysis.load import load_run

        return load_run
    raise AttributeError(name)
