"""Analysis of stored runs: ``load`` (runs, cycles, events…), ``figures`` (every figure derived
from the timeline, one definition for the live rig and the notebooks), ``stats`` (bootstrap
CIs, Wilson intervals, compare), ``plots`` (matplotlib Figures), ``export`` (Parquet),
``synth`` (synthetic runs for tests and benchmarks). See docs/analysis.md."""
