"""One target under atheris (libFuzzer's coverage-guided mutation), in its own process.

``python -m fuzz`` starts one of these per target: libFuzzer owns the process and never
returns, so this child counts the inputs itself, writes its :class:`~fuzz.engine.Stats` as JSON
and exits once the budget or the time is spent. The target's ``rig`` modules are imported
inside ``atheris.instrument_imports`` so their branches guide the mutation; libFuzzer starts
from the target's seeds and the saved regression inputs, with its tokens as a dictionary,
and half of the mutations are the seeded mutator's (line and token aware).
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import random
import sys
import tempfile
import time
from pathlib import Path

import atheris

from .engine import Mutator, Runner, corpus_files, rss_kb
from .targets import TARGETS


def _dict_file(tokens: tuple[bytes, ...], path: Path) -> None:
    """libFuzzer's dictionary format: one ``"..."`` per line, bytes as ``\\xNN``."""
    lines = []
    for t in tokens:
        esc = "".join(chr(b) if 0x20 <= b < 0x7F and b not in (0x22, 0x5C) else f"\\x{b:02X}"
                      for b in t)
        lines.append(f'"{esc}"')
    path.write_text("\n".join(lines) + "\n")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--target", required=True)
    ap.add_argument("--budget", type=int, required=True)
    ap.add_argument("--seconds", type=float)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--crash-dir", type=Path, required=True)
    ap.add_argument("--json", type=Path, required=True)
    a = ap.parse_args()
    target = TARGETS[a.target]
    with atheris.instrument_imports(include=["rig", "iso8583"]):
        runner = Runner(target, "atheris", a.crash_dir)
    work = Path(tempfile.mkdtemp(prefix=f"posrig-fuzz-{target.name}-"))
    seeds_dir = work / "seeds"
    seeds_dir.mkdir()
    for i, s in enumerate([*target.seeds(), *(p.read_bytes() for p in corpus_files(target.name))]):
        (seeds_dir / f"seed-{i:03d}").write_bytes(s[: target.max_len])
    dict_path = work / "tokens.dict"
    if target.tokens:
        _dict_file(target.tokens, dict_path)
    mut = Mutator(random.Random(f"{target.name}:{a.seed}"), target.tokens, target.max_len)
    recent: list[bytes] = [s for s in target.seeds()]
    st = runner.stats
    warm = max(1, min(2000, a.budget // 10))
    start = time.monotonic()

    def finish(stopped: str) -> None:
        st.seconds = time.monotonic() - start
        st.stopped = stopped
        gc.collect()
        st.rss_end_kb = rss_kb()
        st.rss_warm_kb = st.rss_warm_kb or st.rss_end_kb
        st.corpus = sum(1 for _ in (work / "corpus").glob("*"))
        a.json.write_text(json.dumps(st.as_dict(), indent=1))
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(0)

    def one_input(data: bytes) -> None:
        runner.execute(data)
        if st.inputs == warm:
            gc.collect()
            st.rss_warm_kb = rss_kb()
        if st.inputs >= a.budget:
            finish("budget")
        if a.seconds is not None and st.inputs % 64 == 0 and \
                time.monotonic() - start > a.seconds:
            finish("time")

    def custom_mutator(data: bytes, max_size: int, seed: int) -> bytes:
        if seed & 1:
            return atheris.Mutate(data, max_size)
        if len(recent) < 256:
            recent.append(data)
        else:
            recent[seed % 256] = data
        return mut.mutate(data, recent)[:max_size]

    (work / "corpus").mkdir()
    args = [sys.argv[0], str(work / "corpus"), str(seeds_dir), f"-seed={a.seed}",
            f"-max_len={target.max_len}", "-timeout=0", "-rss_limit_mb=4096",
            "-print_final_stats=0", "-reload=0"]
    if target.tokens:
        args.append(f"-dict={dict_path}")
    atheris.Setup(args, one_input, custom_mutator=custom_mutator)
    try:
        atheris.Fuzz()
    finally:
        finish("libFuzzer ended")


if __name__ == "__main__":
    main()
