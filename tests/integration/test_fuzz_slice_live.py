"""The seeded ``make fuzz`` slice of the targets that run over loopback sockets (the live
acquirer host): see ``tests/unit/test_fuzz_slice.py``."""

from __future__ import annotations

import pytest

from fuzz.targets import TARGETS
from tests.unit.test_fuzz_slice import run_slice

pytestmark = pytest.mark.integration


@pytest.mark.parametrize("name", sorted(n for n, t in TARGETS.items() if t.sockets))
def test_seeded_slice_live(name: str) -> None:
    run_slice(name)
