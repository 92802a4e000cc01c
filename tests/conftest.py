"""Test-wide settings: under CI, hypothesis draws the same examples every run (derandomized),
so a property test cannot turn one run red by chance; exploring new inputs is `make fuzz`'s job
and a developer's local runs'."""

from __future__ import annotations

import os

from hypothesis import settings

settings.register_profile("ci", derandomize=True, print_blob=True)
if os.environ.get("CI") == "true":
    settings.load_profile("ci")
