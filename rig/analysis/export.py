"""Export a stored run to Parquet (pyarrow): one file per table, the run's config snapshot (its
secrets masked) in every file's schema metadata, so other tools get the figures and know what
produced them.

    run.to_parquet("exports/nightly/")   # or: rig export RUN --parquet DIR
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pandas as pd

SECRET_KEYS = ("tmk", "password", "token", "key", "secret")
TABLES = ("run", "cycles", "events", "sales", "faults", "current")


def mask_secrets(obj: Any) -> Any:
    """A copy of a config snapshot with every secret-looking value masked (the store already
    masks the lab's keys and passwords; this holds for any snapshot handed in)."""
    if isinstance(obj, dict):
        return {k: ("****" if any(s in str(k).lower() for s in SECRET_KEYS) and v not in (
            None, "") and not isinstance(v, dict | list) else mask_secrets(v))
                for k, v in obj.items()}
    if isinstance(obj, list):
        return [mask_secrets(v) for v in obj]
    return obj


def _plain(df: pd.DataFrame) -> pd.DataFrame:
    """Columns Parquet can hold: dicts / lists as JSON text, categoricals as strings."""
    out = df.copy()
    for c in out.columns:
        s = out[c]
        if isinstance(s.dtype, pd.CategoricalDtype):
            out[c] = s.astype(object).where(s.notna(), None)
        elif s.dtype == object and s.map(lambda v: isinstance(v, dict | list)).any():
            out[c] = s.map(lambda v: None if v is None else json.dumps(v, default=str,
                                                                       sort_keys=True))
        elif s.dtype == object:
            kinds = {type(v) for v in s if v is not None and v == v}
            if len(kinds) > 1:  # mixed (e.g. numbers and text): as text
                out[c] = s.map(lambda v: None if v is None or v != v else str(v))
    return out


def export_run(run: Any, directory: str | Path) -> list[Path]:
    """Write ``run``'s tables (run, cycles, events, sales, faults, current) as
    ``run<id>-<table>.parquet`` in ``directory``; returns the paths."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    d = Path(directory)
    d.mkdir(parents=True, exist_ok=True)
    meta_run = {k: v for k, v in run.run.items() if k not in ("config",)}
    meta = {b"posrig.run": json.dumps(meta_run, default=str, sort_keys=True).encode(),
            b"posrig.config": json.dumps(mask_secrets(run.run.get("config")), default=str,
                                         sort_keys=True).encode()}
    run_row = pd.DataFrame([{k: (json.dumps(v, default=str) if isinstance(v, dict) else v)
                             for k, v in meta_run.items()}])
    tables = {"run": run_row, "cycles": run.cycles, "events": run.events, "sales": run.sales,
              "faults": run.faults, "current": run.current}
    paths = []
    for name in TABLES:
        df = _plain(tables[name])
        table = pa.Table.from_pandas(df, preserve_index=False)
        table = table.replace_schema_metadata({**(table.schema.metadata or {}), **meta})
        p = d / f"run{run.run_id}-{name}.parquet"
        pq.write_table(table, p)
        paths.append(p)
    return paths
