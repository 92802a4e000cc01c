"""The fuzzing engine: run one target's harness on inputs, classify what happened, keep stats.

A :class:`Target` names a harness factory (``build``), its seed inputs and a dictionary of
tokens. :class:`Runner` executes one input under a per-input time limit (``SIGALRM``) and sorts
the outcome into: fine, a documented error, a crash (any other exception, or an ERROR log
record with a traceback while the input ran: a bug the target swallowed), or a hang. The seeded
:class:`Mutator` and :func:`run_random` make the deterministic engine (the ``make test`` slice);
:mod:`fuzz.atheris_child` feeds the same :class:`Runner` from libFuzzer.
"""

from __future__ import annotations

import gc
import hashlib
import logging
import os
import random
import re
import signal
import time
import traceback
import warnings
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
CORPUS_DIR = ROOT / "fuzz" / "corpus"
CRASH_DIR = ROOT / "fuzz" / "crashes"  # not under results/: inputs may hold test card data

Run = Callable[[bytes], object]


class Hang(BaseException):
    """Raised by the alarm inside an input that ran over the per-input time limit."""


@dataclass
class Harness:
    """What a target's ``build`` returns: the per-input function and the documented errors.

    ``run(data)`` returns a small hashable outcome (a reply prefix, a status word) or None; the
    random engine keeps inputs that produce a new outcome. ``close`` releases what ``build``
    made (an event loop, a temp dir)."""

    run: Run
    expected: tuple[type[BaseException], ...]
    close: Callable[[], None] | None = None


@dataclass(frozen=True)
class Target:
    name: str
    what: str
    build: Callable[[], Harness]
    seeds: Callable[[], list[bytes]]
    tokens: tuple[bytes, ...] = ()
    weight: float = 1.0  # share of the input budget (cheap parsers get more)
    time_limit_s: float = 1.0  # per input: over it is a hang
    max_len: int = 2048
    slice_inputs: int = 500  # inputs in the make-test slice
    sockets: bool = False  # uses loopback sockets: its slice is an integration test


@dataclass
class Crash:
    key: str
    kind: str
    message: str
    where: str
    count: int = 0
    path: str | None = None
    known: str | None = None  # a reported crash in code owned elsewhere (fuzz.known)


@dataclass
class Stats:
    target: str
    engine: str
    inputs: int = 0
    ok: int = 0
    expected: int = 0
    crash_inputs: int = 0
    hangs: int = 0
    seconds: float = 0.0
    rss_warm_kb: int = 0
    rss_end_kb: int = 0
    corpus: int = 0
    stopped: str = "budget"
    crashes: dict[str, Crash] = field(default_factory=dict)
    hang_paths: list[str] = field(default_factory=list)

    @property
    def new_crashes(self) -> list[Crash]:
        """Distinct crashes that are not known-open (what fails a run)."""
        return [c for c in self.crashes.values() if not c.known]

    @property
    def known_crashes(self) -> list[Crash]:
        return [c for c in self.crashes.values() if c.known]

    @property
    def rate(self) -> float:
        return self.inputs / self.seconds if self.seconds > 0 else 0.0

    @property
    def rss_growth_kb(self) -> int:
        return max(0, self.rss_end_kb - self.rss_warm_kb)

    def as_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["rate"] = round(self.rate, 1)
        d["rss_growth_kb"] = self.rss_growth_kb
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Stats:
        d = {k: v for k, v in d.items() if k not in ("rate", "rss_growth_kb")}
        d["crashes"] = {k: Crash(**v) for k, v in d.get("crashes", {}).items()}
        return cls(**d)


def rss_kb() -> int:
    """Resident set size of this process in KiB (Linux ``/proc``)."""
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * (os.sysconf("SC_PAGE_SIZE") // 1024)
    except OSError:
        return 0


class _Swallowed(logging.Handler):
    """Collects ERROR records that carry a traceback: a target that catches its own bug and
    logs it (``log.exception``) still counts as a crash."""

    def __init__(self) -> None:
        super().__init__(logging.ERROR)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        if record.exc_info and record.exc_info[0] is not None:
            self.records.append(record)


def _where(tb: traceback.StackSummary) -> str:
    """The innermost frame in project code (``rig/``), else the innermost frame."""
    for fr in reversed(tb):
        for top in ("rig", "fuzz"):
            if f"/{top}/" in fr.filename:
                return f"{top}/{fr.filename.rsplit(f'/{top}/', 1)[1]}:{fr.lineno} in {fr.name}"
    if tb:
        fr = tb[-1]
        return f"{Path(fr.filename).name}:{fr.lineno}"
    return "?"


def _safe(text: str, limit: int = 200) -> str:
    """Error text for a report: card data masked, bounded."""
    try:
        from rig.core.redact import redact_text

        text = redact_text(text)
    except Exception:  # the redactor is fuzzed elsewhere; never let it break reporting
        text = re.sub(r"\d{12,}", "<digits>", text)
    return text if len(text) <= limit else text[: limit - 3] + "..."


class Runner:
    """Executes inputs of one target and keeps its :class:`Stats`."""

    def __init__(self, target: Target, engine: str, crash_dir: Path | None = CRASH_DIR) -> None:
        self.target = target
        self.stats = Stats(target.name, engine)
        self.crash_dir = crash_dir
        self._swallowed = _Swallowed()
        # a warning's registry keeps every distinct text: growth the RSS column should not see
        warnings.simplefilter("ignore")
        self.harness = target.build()
        self._alarm = target.time_limit_s > 0 and hasattr(signal, "setitimer")
        if self._alarm:
            signal.signal(signal.SIGALRM, _on_alarm)

    def close(self) -> None:
        if self.harness.close is not None:
            self.harness.close()

    def execute(self, data: bytes) -> tuple[str, object]:
        """Run one input; (``ok`` / ``expected`` / ``crash`` / ``hang``, outcome)."""
        st = self.stats
        st.inputs += 1
        root = logging.getLogger()
        root.addHandler(self._swallowed)
        self._swallowed.records.clear()
        outcome: object = None
        try:
            if self._alarm:
                signal.setitimer(signal.ITIMER_REAL, self.target.time_limit_s)
            try:
                outcome = self.harness.run(data)
            finally:
                if self._alarm:
                    signal.setitimer(signal.ITIMER_REAL, 0)
        except Hang:
            st.hangs += 1
            path = self._save(data, "hang")
            if path and len(st.hang_paths) < 20:
                st.hang_paths.append(path)
            self._rebuild()
            return "hang", None
        except self.harness.expected as e:
            st.expected += 1
            return "expected", (type(e).__name__, _stem(str(e)))
        except (KeyboardInterrupt, SystemExit):
            raise
        except BaseException as e:  # anything else is a crash
            self._crash(data, type(e).__name__, str(e),
                        _where(traceback.extract_tb(e.__traceback__)))
            return "crash", type(e).__name__
        finally:
            root.removeHandler(self._swallowed)
        if self._swallowed.records:
            rec = self._swallowed.records[0]
            assert rec.exc_info is not None
            etype, exc, tb = rec.exc_info
            self._crash(data, f"logged {etype.__name__ if etype else '?'}",
                        f"{rec.getMessage()}: {exc}", _where(traceback.extract_tb(tb)))
            return "crash", "logged"
        st.ok += 1
        return "ok", outcome

    def _rebuild(self) -> None:
        """After a hang the harness may be mid-way through anything: make a fresh one."""
        try:
            self.close()
        except BaseException:
            pass
        self.harness = self.target.build()

    def _crash(self, data: bytes, kind: str, message: str, where: str) -> None:
        st = self.stats
        st.crash_inputs += 1
        key = f"{kind}@{where}"
        c = st.crashes.get(key)
        if c is None:
            from .known import known

            k = known(self.target.name, kind, where)
            c = st.crashes[key] = Crash(key, kind, _safe(message), where,
                                        known=k.what if k else None)
            c.path = self._save(data, "open" if k else "crash")
        c.count += 1

    def _save(self, data: bytes, what: str) -> str | None:
        if self.crash_dir is None:
            return None
        d = self.crash_dir / self.target.name
        d.mkdir(parents=True, exist_ok=True)
        path = d / f"{what}-{hashlib.sha1(data).hexdigest()[:16]}.bin"
        path.write_bytes(data)
        return str(path)


def _on_alarm(signum: int, frame: object) -> None:
    raise Hang()


def _stem(text: str) -> str:
    """An error message with numbers and quoted values blurred: same stem, same outcome."""
    return re.sub(r"'[^']*'|\"[^\"]*\"|\d+", "#", text)[:60]


# --- the seeded mutator --------------------------------------------------------------------

INTERESTING_BYTES = (0x00, 0x01, 0x7F, 0x80, 0xFF, 0x0A, 0x0D, 0x20, 0x3A, 0x3B, 0x2C, 0x22,
                     0x27, 0x3D, 0x5B, 0x7B, 0x25, 0x2A)
INTERESTING_NUMBERS = (b"0", b"-1", b"1", b"-0", b"9" * 20, b"65535", b"65536", b"2147483648",
                       b"1e308", b"1e999", b"-1e999", b"nan", b"inf", b"0.0000001", b"1.2.3",
                       b"0x10", b"+", b"-", b".", b"99999999999999999999999999999999")
_DIGITS = re.compile(rb"[-+]?\d+(?:\.\d+)?")
MAX_CORPUS = 1024  # inputs the random engine keeps (its memory counts in the RSS column)


class Mutator:
    """Byte- and line-level mutations, splicing and dictionary tokens, from a seeded RNG."""

    def __init__(self, rng: random.Random, tokens: Sequence[bytes], max_len: int) -> None:
        self.rng = rng
        self.tokens = list(tokens) or [b"\x00"]
        self.max_len = max_len

    def mutate(self, data: bytes, corpus: Sequence[bytes]) -> bytes:
        r = self.rng
        if r.random() < 0.02:
            return r.randbytes(r.randrange(0, 64))
        buf = bytearray(data)
        for _ in range(r.choice((1, 1, 1, 2, 2, 3, 4, 6))):
            self._one(buf, corpus)
        return bytes(buf[: self.max_len])

    def _one(self, buf: bytearray, corpus: Sequence[bytes]) -> None:
        r = self.rng
        n = len(buf)
        op = r.randrange(14)
        pos = r.randrange(n) if n else 0
        if op == 0 and n:
            buf[pos] ^= 1 << r.randrange(8)
        elif op == 1 and n:
            buf[pos] = r.randrange(256)
        elif op == 2 and n:
            buf[pos] = r.choice(INTERESTING_BYTES)
        elif op == 3:
            buf[pos:pos] = r.randbytes(r.randrange(1, 9))
        elif op == 4 and n:
            del buf[pos : pos + r.randrange(1, 17)]
        elif op == 5 and n:
            end = min(n, pos + r.randrange(1, 33))
            chunk = bytes(buf[pos:end])
            at = r.randrange(n + 1)
            buf[at:at] = chunk * r.choice((1, 1, 2, 8))
        elif op == 6:
            buf[pos:pos] = r.choice(self.tokens)
        elif op == 7 and n:
            tok = r.choice(self.tokens)
            buf[pos : pos + len(tok)] = tok
        elif op == 8 and corpus:
            other = r.choice(corpus)
            if other:
                a = r.randrange(len(other))
                b = min(len(other), a + r.randrange(1, 65))
                buf[pos:pos] = other[a:b]
        elif op == 9:
            nums = list(_DIGITS.finditer(buf))
            if nums:
                m = r.choice(nums)
                buf[m.start() : m.end()] = r.choice(INTERESTING_NUMBERS)
            else:
                buf[pos:pos] = r.choice(INTERESTING_NUMBERS)
        elif op == 10:
            self._lines(buf)
        elif op == 11 and n > 1:
            q = r.randrange(n)
            buf[pos], buf[q] = buf[q], buf[pos]
        elif op == 12 and n:
            del buf[pos:]
        elif op == 13 and n:
            c = buf[pos]
            if 0x41 <= c <= 0x5A or 0x61 <= c <= 0x7A:
                buf[pos] = c ^ 0x20

    def _lines(self, buf: bytearray) -> None:
        """Drop, repeat or swap whole lines (text formats: YAML, SCPI, console)."""
        r = self.rng
        lines = bytes(buf).split(b"\n")
        if not lines:
            return
        i = r.randrange(len(lines))
        how = r.randrange(3)
        if how == 0 and len(lines) > 1:
            del lines[i]
        elif how == 1:
            lines.insert(i, lines[r.randrange(len(lines))])
        else:
            j = r.randrange(len(lines))
            lines[i], lines[j] = lines[j], lines[i]
        buf[:] = b"\n".join(lines)


def run_random(target: Target, budget: int, seconds: float | None, seed: int,
               crash_dir: Path | None = CRASH_DIR, replay: Sequence[bytes] = ()) -> Stats:
    """The seeded engine: seeds (and ``replay``) first, then mutants of the corpus; an input
    with a new outcome joins the corpus. Deterministic for a given seed and budget."""
    runner = Runner(target, "random", crash_dir)
    rng = random.Random(f"{target.name}:{seed}")
    mut = Mutator(rng, target.tokens, target.max_len)
    corpus: list[bytes] = list(dict.fromkeys(target.seeds()))
    first = [*replay, *corpus]
    seen: set[object] = set()
    warm = max(1, min(2000, budget // 10))
    start = time.monotonic()
    try:
        for i in range(budget):
            data = first[i] if i < len(first) else mut.mutate(rng.choice(corpus), corpus)
            verdict, outcome = runner.execute(data)
            sig = (verdict, _hashable(outcome))
            if sig not in seen:
                seen.add(sig)
                if len(corpus) < MAX_CORPUS and data not in corpus:
                    corpus.append(data)
            if i + 1 == warm:
                gc.collect()
                runner.stats.rss_warm_kb = rss_kb()
            if seconds is not None and time.monotonic() - start > seconds:
                runner.stats.stopped = "time"
                break
    finally:
        runner.stats.seconds = time.monotonic() - start
        gc.collect()
        runner.stats.rss_end_kb = rss_kb()
        if not runner.stats.rss_warm_kb:
            runner.stats.rss_warm_kb = runner.stats.rss_end_kb
        runner.stats.corpus = len(corpus)
        runner.close()
    return runner.stats


def _hashable(x: object) -> object:
    try:
        hash(x)
        return x
    except TypeError:
        return repr(x)[:80]


def corpus_files(name: str, root: Path = CORPUS_DIR) -> list[Path]:
    """The saved regression inputs of a target (``fuzz/corpus/<name>/*.bin``)."""
    d = root / name
    return sorted(d.glob("*.bin")) if d.is_dir() else []
