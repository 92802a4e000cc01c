"""The ISO 8583 dialects by name (the one module that knows every dialect)."""

from __future__ import annotations

from rig.core.errors import TestError

from .cup_codec import CUP
from .dialects import Dialect
from .iso87 import ISO87

DIALECTS: dict[str, Dialect] = {"cup": CUP, "iso87": ISO87}


def get_dialect(name: str) -> Dialect:
    """The dialect called `name`: ``"cup"`` (China UnionPay POS) or ``"iso87"``."""
    try:
        return DIALECTS[name]
    except KeyError:
        raise TestError(
            f"unknown ISO 8583 dialect {name!r}: expected one of {sorted(DIALECTS)}"
        ) from None
