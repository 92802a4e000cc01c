"""What crosses the service's API: results, faults and errors as JSON, and back.

Both sides use this module (the client imports it; it imports neither side), so a result a
client gets is the same type, with the same fields, as the in-process call returns.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

from ..analysis.metrics import SignOn
from ..analysis.sale_metrics import SaleResult
from ..core import errors as _errors
from ..drivers.reader import CardCheck
from ..faults.spec import Fault, fault_from_dict

TYPES: dict[str, type] = {"SignOn": SignOn, "SaleResult": SaleResult, "CardCheck": CardCheck}


def _register_late() -> None:
    """Result types of modules that import heavier things (recovery, scenario verdicts)."""
    if "Recovery" not in TYPES:
        from ..control.cardcheck import CardReport
        from ..control.recovery import Recovery
        from ..control.scenario import Verdict

        TYPES.update(Recovery=Recovery, Verdict=Verdict, CardReport=CardReport)


def _plain(x: Any) -> Any:
    if isinstance(x, float) and not math.isfinite(x):
        return None
    if isinstance(x, dict):
        return {str(k): _plain(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_plain(v) for v in x]
    return x


def encode(obj: Any) -> Any:
    """A call's result as JSON-able data (dataclass results carry their type's name)."""
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return {"__type__": type(obj).__name__,
                **_plain({f.name: getattr(obj, f.name) for f in dataclasses.fields(obj)})}
    if isinstance(obj, list):
        return [encode(x) for x in obj]
    return _plain(obj)


def decode(data: Any) -> Any:
    if isinstance(data, list):
        return [decode(x) for x in data]
    if isinstance(data, dict) and "__type__" in data:
        _register_late()
        fields = dict(data)
        cls = TYPES.get(str(fields.pop("__type__")))
        if cls is None:
            return fields
        return cls(**fields)
    return data


def fault_to_wire(f: Fault) -> dict[str, Any]:
    return {"fault": f.name, **f.params(), **f.window()}


def fault_from_wire(data: dict[str, Any]) -> Fault:
    return fault_from_dict(data)


def error_to_wire(e: BaseException) -> dict[str, Any]:
    return {"error": type(e).__name__, "message": str(e) or type(e).__name__}


def error_from_wire(data: dict[str, Any]) -> BaseException:
    """The service's error as the same class here (a RigError subclass, or Cancelled)."""
    name, msg = str(data.get("error", "RigError")), str(data.get("message", ""))
    cls = getattr(_errors, name, None)
    if isinstance(cls, type) and issubclass(cls, (_errors.RigError, _errors.Cancelled)):
        return cls(msg)
    return _errors.ServiceError(f"{name}: {msg}")
