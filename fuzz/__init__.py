"""Fuzzing at scale: every parser that reads untrusted bytes, one harness each.

``python -m fuzz`` (``make fuzz``) runs each target of :mod:`fuzz.targets` for a share of the
input budget and prints, per target, the inputs run, crashes (any exception but the target's
documented errors, or an internal error the target swallowed and logged), hangs (an input over
the per-input time limit), memory growth and the rate. With atheris installed the inputs come
from libFuzzer's coverage-guided mutation (one child process per target); without it, from the
seeded mutator of :mod:`fuzz.engine`, which ``tests/unit/test_fuzz_slice.py`` runs for a few
hundred inputs per target in ``make test``. Crashing inputs go to ``fuzz/crashes`` (git-ignored,
and outside ``results/`` so ``rig audit`` of a results directory is not tripped by the seeds'
test PANs); the ones worth keeping are copied to ``fuzz/corpus/<target>/`` and replayed by
that test.

Harness code lives here, outside ``rig``; it imports ``rig`` only inside each target's
``build`` so atheris can instrument the modules it loads.
"""
