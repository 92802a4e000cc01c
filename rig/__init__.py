"""posrig: hardware-in-the-loop rig controller for payment terminals.

    from rig import open_rig
    rig = open_rig("configs/labs/virtual.yaml")
    rig.power_cycle("T1"); rig.wait_signon("T1")

    from rig import list_runs, load_run, compare
    run = load_run("results/virtual.db", run_id)   # figures re-derived from the events
    compare(run_a, run_b, figure="ready_s").verdict
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"
__all__ = ["Rig", "SignOn", "open_rig", "open_local", "load_run", "list_runs", "compare",
           "__version__"]

if TYPE_CHECKING:
    from .analysis.load import list_runs, load_run
    from .analysis.metrics import SignOn
    from .analysis.stats import compare
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
    if name in ("load_run", "list_runs"):
        from .analysis import load

        return getattr(load, name)
    if name == "compare":
        from .analysis.stats import compare

        return compare
    raise AttributeError(name)
