"""Every figure of DESIGN §4 (plus ``recover_s`` and ``robot_wait_s``) derived from the timeline.

One definition, used everywhere: the live end-of-cycle result (:func:`rig.analysis.metrics.
signon_figures`, :func:`rig.analysis.sale_metrics.sale_figures`) runs :func:`derive_cycles` on
the events of the cycle that just ended; ``load_run(...).figures()``, the CLI, the reports, the
notebooks and the benchmarks run it on a whole run's events. It is vectorised with numpy: a
handful of whole-array passes (group minima with ``ufunc.at``, gathers, masks) and regular
expressions over the few console lines that carry a result; no Python loop per event or per
cycle, so ten million events take about as long as reading them.

A figure whose start or end event is missing (a time-out, an aborted cycle, a terminal that gave
up) is NaN, and the ``why`` column says which event was missing, never a guessed number. The
start and end events of each figure are listed in ``docs/timing.md``.

Inputs are event columns (a DataFrame as :func:`rig.analysis.load.load_run` gives, or a list of
:class:`~rig.timeline.events.Event`): ``cycle_id, mono_ns, kind, source, terminal`` and the few
payload fields the figures read, either as columns (``stan, rc, line, waited_s, fault_id``) or
inside a ``data`` column of dicts.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd

from ..timeline.events import Event, EventKind

SIGNON_FIGURES = ("boot_s", "signon_req_s", "signon_host_s", "ready_s")
SALE_FIGURES = ("card_to_auth_s", "auth_host_s", "auth_to_result_s", "card_to_result_s",
                "robot_wait_s")
FIGURES = (*SIGNON_FIGURES, *SALE_FIGURES, "recover_s")
PAYLOAD = ("stan", "rc", "line", "waited_s", "fault_id")
# the event kinds whose payload a figure reads (load_run extracts these fields in SQL)
PAYLOAD_KINDS = {
    "stan": (EventKind.SIGNON_REQ, EventKind.SIGNON_RSP, EventKind.AUTH_REQ, EventKind.AUTH_RSP),
    "rc": (EventKind.SIGNON_RSP,),
    "line": (EventKind.AUTH_RESULT, EventKind.SIGNON_FAIL, EventKind.CARD_READ),
    "waited_s": (EventKind.ROBOT_WAIT,),
    "fault_id": (EventKind.FAULT_ON, EventKind.FAULT_OFF),
}
_DATA_KEY = {"stan": "stan", "rc": "rc", "line": "line", "waited_s": "waited_s", "fault_id": "id"}

KINDS: tuple[str, ...] = tuple(k.value for k in EventKind)
_CODE = {k: i for i, k in enumerate(KINDS)}
BIG = np.iinfo(np.int64).max
_KV = re.compile(r"(\w+)=(\S+)")
_RESULT = re.compile(r"RESULT (\w+)")
_FEW = 16  # up to this many lines are parsed with re directly (same expressions)
RESULT_FIELDS = {"rc": "rc", "auth_code": "auth", "rrn": "rrn", "stan": "stan",
                 "balance": "balance", "pan_masked": "pan"}  # pan_masked: of the CARD read line

# why a figure is NaN (per figure: missing start event, missing end event)
_WHY = {
    "boot_s": ("no power-on in this cycle", "no console line or host connect after power-on"),
    "signon_req_s": ("no power-on in this cycle", "no 0800 after power-on"),
    "signon_host_s": ("no power-on in this cycle", "no 0810 with rc=00 (or no 0800 it answers)"),
    "ready_s": ("no power-on in this cycle", "no READY after power-on"),
    "card_to_auth_s": ("card never presented", "no 0200/0100 after the card was presented"),
    "auth_host_s": ("no 0200/0100", "no 0210/0110 for the 0200/0100"),
    "auth_to_result_s": ("no 0210/0110", "no RESULT on the terminal"),
    "card_to_result_s": ("card never presented", "no RESULT on the terminal"),
    "robot_wait_s": ("no robot wait recorded", "no robot wait recorded"),
}


def kind_codes(kinds: Any) -> np.ndarray:
    """Event kinds (strings, an EventKind list or a categorical) as int16 codes into
    :data:`KINDS` (-1 for a kind this version does not know)."""
    if isinstance(kinds, pd.Series) and isinstance(kinds.dtype, pd.CategoricalDtype):
        cats = np.array([_CODE.get(str(c), -1) for c in kinds.cat.categories] + [-1],
                        dtype=np.int16)
        return cats[kinds.cat.codes.to_numpy()]  # code -1 (NaN) picks the appended -1
    if not isinstance(kinds, pd.Series):
        kinds = pd.Series(np.asarray(kinds, dtype=object), dtype=object)
    return pd.Categorical(kinds.astype(object) if kinds.dtype != object else kinds,
                          categories=KINDS).codes.astype(np.int16)


class Columns:
    """The columns the figures read, as numpy arrays: a dense cycle code per row (-1: in no
    cycle), ``mono_ns``, kind codes, whether the source is a console, a terminal code; payload
    fields are fetched only for the rows that need them (:meth:`take`)."""

    def __init__(self, cycle_ids: np.ndarray, mono: np.ndarray, kind: np.ndarray,
                 console: np.ndarray, terminal: np.ndarray, terminals: np.ndarray,
                 payload: Any, only: Sequence[int] | None = None,
                 sources: np.ndarray | None = None) -> None:
        cid = np.asarray(cycle_ids)
        valid = ~np.isnan(cid) if cid.dtype.kind == "f" else np.ones(len(cid), dtype=bool)
        ids = np.where(valid, cid, 0).astype(np.int64)
        asked = None if only is None else np.asarray(only, dtype=np.int64)
        pool = ids[valid] if asked is None else asked
        lo = int(pool.min()) if pool.size else 0
        hi = int(pool.max()) if pool.size else -1
        present = np.zeros(hi - lo + 1, dtype=bool)
        inside = valid & (ids >= lo) & (ids <= hi)
        if asked is None:
            present[ids[inside] - lo] = True
        else:  # exactly the cycles asked for, with or without events
            present[asked - lo] = True
            inside[inside] = present[ids[inside] - lo]
        dense = np.cumsum(present) - 1  # id - lo -> dense code
        self.ids = np.flatnonzero(present) + lo  # cycle id of each dense code (ascending)
        self.C = len(self.ids)
        self.cyc = np.full(len(cid), -1, dtype=np.int64)
        self.cyc[inside] = dense[ids[inside] - lo]
        self.mono = np.asarray(mono, dtype=np.int64)
        self.kind = kind
        self.console = console
        self.src = sources  # source name per row (what a figure's end event came from)
        self.term = terminal  # int code per row (-1: none)
        self.terminals = terminals  # code -> name
        self._payload = payload
        self.n = len(self.mono)
        self._by_kind: tuple[np.ndarray, np.ndarray] | None = None

    # --- constructors -------------------------------------------------------------------------
    @classmethod
    def from_frame(cls, ev: pd.DataFrame, only: Sequence[int] | None = None) -> Columns:
        src = ev["source"]
        if isinstance(src.dtype, pd.CategoricalDtype):
            flags = np.append(src.cat.categories.astype(str).str.endswith(".console"), False)
            console = flags[src.cat.codes.to_numpy()]
        else:
            console = src.astype("string").str.endswith(".console").fillna(False).to_numpy(bool)
        term = ev["terminal"]
        tcat = term if isinstance(term.dtype, pd.CategoricalDtype) else term.astype("category")
        cycle = ev["cycle_id"]
        cid = cycle.to_numpy(dtype=np.float64, na_value=np.nan) if cycle.hasnans or (
            cycle.dtype.kind not in "iu") else cycle.to_numpy(dtype=np.int64)
        return cls(cid, ev["mono_ns"].to_numpy(dtype=np.int64), kind_codes(ev["kind"]), console,
                   tcat.cat.codes.to_numpy(dtype=np.int64),
                   np.asarray(tcat.cat.categories.astype(str), dtype=object), ev, only,
                   src.astype(object).to_numpy(dtype=object))

    @classmethod
    def from_events(cls, events: Iterable[Event], cycle: int = 0) -> Columns:
        """One cycle's events (the live end-of-cycle result): all rows in cycle ``cycle``."""
        evs = list(events)
        names = sorted({e.terminal for e in evs if e.terminal})
        code = {t: i for i, t in enumerate(names)}
        return cls(np.full(len(evs), cycle, dtype=np.int64),
                   np.fromiter((e.mono_ns for e in evs), np.int64, len(evs)),
                   np.fromiter((_CODE.get(str(e.kind), -1) for e in evs), np.int16, len(evs)),
                   np.fromiter((e.source.endswith(".console") for e in evs), bool, len(evs)),
                   np.fromiter((code.get(e.terminal, -1) for e in evs), np.int64, len(evs)),
                   np.array(names, dtype=object), evs,
                   sources=np.array([e.source for e in evs], dtype=object))

    # --- payload ------------------------------------------------------------------------------
    # --- rows -------------------------------------------------------------------------------
    def rows(self, *kinds: EventKind) -> np.ndarray:
        """Ascending rows (in some cycle) of the given kinds; one stable sort of the kind codes
        serves every kind."""
        if self._by_kind is None:
            codes = np.where(self.cyc >= 0, self.kind, -2)
            order = np.argsort(codes, kind="stable")
            self._by_kind = (order, np.searchsorted(codes[order], np.arange(-1, len(KINDS) + 1)))
        order, bounds = self._by_kind
        parts = [order[bounds[_CODE[k.value] + 1]:bounds[_CODE[k.value] + 2]] for k in kinds]
        return parts[0] if len(parts) == 1 else np.sort(np.concatenate(parts))

    def since(self, rows: np.ndarray, t: np.ndarray) -> np.ndarray:
        """The ``rows`` stamped at or after their cycle's ``t`` (per-cycle ns; BIG: none)."""
        return rows[self.mono[rows] >= t[self.cyc[rows]]]

    # --- group reductions over rows -------------------------------------------------------------
    def gmin(self, rows: np.ndarray) -> np.ndarray:
        """Per cycle: the earliest ``mono_ns`` of ``rows`` (BIG: none)."""
        out = np.full(self.C, BIG, dtype=np.int64)
        np.minimum.at(out, self.cyc[rows], self.mono[rows])
        return out

    def first(self, rows: np.ndarray) -> np.ndarray:
        """Per cycle: the first of ``rows`` in time order (ties: the one recorded first, as a
        stable sort by ``mono_ns`` gives); -1: none."""
        c, t = self.cyc[rows], self.mono[rows]
        best = np.full(self.C, BIG, dtype=np.int64)
        np.minimum.at(best, c, t)
        tie = t == best[c]
        pos = np.full(self.C, BIG, dtype=np.int64)
        np.minimum.at(pos, c[tie], rows[tie])
        return np.where(pos == BIG, -1, pos)

    def last(self, rows: np.ndarray) -> np.ndarray:
        """Per cycle: the last of ``rows`` in time order (ties: the one recorded last); -1."""
        c, t = self.cyc[rows], self.mono[rows]
        best = np.full(self.C, -1, dtype=np.int64)
        np.maximum.at(best, c, t)
        tie = t == best[c]
        pos = np.full(self.C, -1, dtype=np.int64)
        np.maximum.at(pos, c[tie], rows[tie])
        return pos

    def at(self, picked: np.ndarray, missing: int = BIG) -> np.ndarray:
        """``mono_ns`` of the row picked per cycle (``missing`` where none)."""
        return _gather(self.mono, picked, missing)

    def source_of(self, picked: np.ndarray) -> np.ndarray:
        """Where the row picked per cycle came from: ``console``, ``ecr`` (STATUS / RESULT?
        polled), ``estimate`` (0810 + a configured delay), ``host``; None where no row."""
        out = np.full(self.C, None, dtype=object)
        if self.src is None:
            return out
        has = picked >= 0
        names = self.src[picked[has]].astype(str)
        out[has] = np.array([n.rsplit(".", 1)[-1] for n in names], dtype=object)
        return out

    def take(self, name: str, rows: np.ndarray) -> np.ndarray:
        """Payload field ``name`` of ``rows``."""
        return take(self._payload, name, rows)

    def pick(self, name: str, picked: np.ndarray) -> np.ndarray:
        """Payload ``name`` of the row picked per cycle (None / NaN where no row)."""
        has = picked >= 0
        vals = self.take(name, picked[has])
        out = np.full(self.C, np.nan if name == "waited_s" else None,
                      dtype=np.float64 if name == "waited_s" else object)
        out[has] = vals
        return out


def take(payload: pd.DataFrame | list[Event], name: str, rows: np.ndarray) -> np.ndarray:
    """Payload field ``name`` (one of :data:`PAYLOAD`) of ``rows`` of an events frame (its
    column, else its ``data`` dicts) or an event list: an object array, None where absent;
    ``waited_s`` as float, NaN where absent."""
    rows = np.asarray(rows, dtype=np.int64)
    key = _DATA_KEY[name]
    if isinstance(payload, list):  # Events
        vals: Any = [payload[i].data.get(key) for i in rows]
    elif name in payload.columns:
        vals = payload[name].iloc[rows].to_numpy(dtype=object)
    elif "data" in payload.columns:
        data = payload["data"].iloc[rows].to_numpy(dtype=object)
        vals = [d.get(key) if isinstance(d, Mapping) else None for d in data]
    else:
        vals = [None] * len(rows)
    out = np.empty(len(rows), dtype=object)
    out[:] = vals
    if name == "waited_s":
        return pd.to_numeric(pd.Series(out, dtype=object), errors="coerce").to_numpy(
            dtype=np.float64)
    return np.where(pd.isna(out), None, out) if len(out) else out  # NaN / NA: absent


def _gather(values: np.ndarray, rows: np.ndarray, missing: Any) -> np.ndarray:
    """``values[rows]``, ``missing`` where a row is -1."""
    out = np.full(len(rows), missing, dtype=values.dtype)
    ok = rows >= 0
    out[ok] = values[rows[ok]]
    return out


def _same(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Elementwise ``a == b`` of object arrays (None equals None, as in Python)."""
    return np.asarray(a == b, dtype=bool) if len(a) else np.zeros(0, dtype=bool)


def _given(a: np.ndarray) -> np.ndarray:
    """Elementwise ``bool(x)`` of an object array of strings / None."""
    return (a != None) & (a != "")  # noqa: E711 (elementwise)


def _secs(a: np.ndarray, b: np.ndarray, ok: np.ndarray | None = None) -> np.ndarray:
    """(b - a) in seconds where both are set (not BIG / -1), else NaN."""
    good = (a != BIG) & (b != BIG) & (a >= 0) & (b >= 0)
    if ok is not None:
        good &= ok
    return np.where(good, (b - a) / 1e9, np.nan)


# Python's \s and \w on text, spelled for RE2 (whose own \s, \w are narrower): for ASCII
# lines, and for any others
_ASCII = ("\t-\r\x1c-\x1f ", "\\w")
_UNICODE = ("\t-\r\x1c-\x1f\x85\\p{Z}", "\\p{L}\\p{N}_")


def _kv_pattern(key: str, classes: tuple[str, str] = _ASCII) -> str:
    """RE2 pattern for the last value of ``key`` that ``dict(_KV.findall(line))`` gives: in a
    whitespace-separated token, ``_KV`` matches at the first run of word characters followed by
    ``=`` (the value runs to the token's end), so ``key`` counts when the part of the token
    before it holds no such run."""
    sp, w = classes
    return (f"(?:.*[{sp}]|^)(?:[^{sp}{w}]|[{w}]+[^{sp}{w}=])*" + re.escape(key)
            + f"=(?P<v>[^{sp}]+)")


def line_fields(lines: np.ndarray, keys: Mapping[str, str]) -> dict[str, np.ndarray]:
    r"""``key=value`` pairs of console lines, as ``dict(re.findall(r"(\w+)=(\S+)", line))``
    gives them (object arrays; None where a line lacks the key). A live cycle's few lines go
    through ``re``; a run's go through Arrow's RE2 kernels with patterns that give the same
    pairs (tested against each other on random lines)."""
    n = len(lines)
    out = {name: np.full(n, None, dtype=object) for name in keys}
    given = np.flatnonzero(_given(np.asarray(lines, dtype=object)))
    if len(given) == 0:
        return out
    if len(given) <= _FEW:  # a live cycle's line or two: Arrow costs more than it saves
        for i in given:
            kv = dict(_KV.findall(str(lines[i])))
            for name, key in keys.items():
                out[name][i] = kv.get(key)
        return out
    import pyarrow as pa
    import pyarrow.compute as pc

    arr = pa.array(np.asarray(lines, dtype=object)[given], type=pa.string())
    ascii_ = pc.string_is_ascii(arr).to_numpy(zero_copy_only=False)
    for part, classes in ((ascii_, _ASCII), (~ascii_, _UNICODE)):
        if not part.any():
            continue
        sub = arr.filter(pa.array(part))
        for name, key in keys.items():
            got = pc.extract_regex(sub, _kv_pattern(key, classes)).flatten()[0]  # null: none
            out[name][given[part]] = got.to_numpy(zero_copy_only=False)
    return out


def result_outcome(lines: np.ndarray) -> np.ndarray:
    """The word after ``RESULT`` in the terminal's result line ("failed" when none)."""
    if len(lines) == 0:
        return np.empty(0, dtype=object)
    if len(lines) <= _FEW:
        found = [_RESULT.search(str(x)) if x is not None else None for x in lines]
        return np.array([m.group(1) if m else "failed" for m in found], dtype=object)
    import pyarrow as pa
    import pyarrow.compute as pc

    arr = pa.array(np.where(_given(lines), lines, "None"), type=pa.string())
    word = pc.extract_regex(arr, r"RESULT (?P<w>[\p{L}\p{N}_]+)").flatten()[0]  # \w as re
    return pc.fill_null(word, "failed").to_numpy(zero_copy_only=False).astype(object)


# --- the derivation -------------------------------------------------------------------------------
def derive_cycles(cols: Columns, *, has_console: bool | Mapping[str, bool] = True,
                  kinds: np.ndarray | None = None, explain: bool = True,
                  result_fields: Sequence[str] = tuple(RESULT_FIELDS),
                  cannot: Mapping[str, Mapping[str, str]] | None = None) -> dict[str, np.ndarray]:
    """Every per-cycle figure and outcome field of the cycles in ``cols`` (arrays indexed by
    dense cycle code; see :func:`figures` for the columns). ``kinds``: the cycles' kinds
    ("signon", "sale", …), to say which figures apply; None: every figure is computed.
    ``result_fields``: which fields of the terminal's result line to read (``stan`` always).
    ``cannot``: per terminal, figures its profile cannot supply and why (the ``why`` of a NaN)."""
    C, K = cols.C, EventKind
    out: dict[str, np.ndarray] = {"cycle_id": cols.ids}
    named = np.flatnonzero((cols.term >= 0) & (cols.cyc >= 0))
    first_row = cols.first(named)
    tcode = _gather(cols.term, first_row, -1)
    names = np.append(cols.terminals, None)
    out["terminal"] = names[np.where(tcode >= 0, tcode, len(cols.terminals))]

    # sign-on: power on -> first console line / host connect, 0800, 0810, READY
    t0 = cols.gmin(cols.rows(K.POWER_ON))
    has_on = t0 != BIG
    console_rows = np.flatnonzero(cols.console & (cols.cyc >= 0)
                                  & (cols.kind != _CODE[K.ERROR.value]))
    console_first = cols.gmin(cols.since(console_rows, t0))
    connect = cols.gmin(cols.since(cols.rows(K.HOST_CONNECT), t0))
    if isinstance(has_console, Mapping):
        hc = np.array([bool(has_console.get(t, True)) for t in cols.terminals] + [True])
        cons = hc[np.where(tcode >= 0, tcode, len(cols.terminals))]
    else:
        cons = np.full(C, bool(has_console))
    req = cols.since(cols.rows(K.SIGNON_REQ), t0)
    first_req = cols.gmin(req)
    # no console: the terminal's first host connect; where the host could not tell whose
    # connect it was (it learns the terminal from the 0800), the 0800 itself (an upper bound)
    first = np.where(cons & (console_first != BIG), console_first,
                     np.where(connect != BIG, connect, first_req))
    attempts = np.bincount(cols.cyc[req], minlength=C)
    rsp = cols.since(cols.rows(K.SIGNON_RSP), t0)
    ok_rsp = cols.last(rsp[cols.take("rc", rsp) == "00"])
    rsp_stan = cols.pick("stan", ok_rsp)
    rsp_ns = cols.at(ok_rsp, -1)
    rc_ = cols.cyc[req]
    match = _same(cols.take("stan", req), rsp_stan[rc_]) & (ok_rsp[rc_] >= 0) & (
        cols.mono[req] <= rsp_ns[rc_])
    ok_req = cols.last(req[match])
    ready = cols.gmin(cols.since(cols.rows(K.READY), t0))
    signed = cols.gmin(cols.since(cols.rows(K.SIGNON_OK), t0))
    fail = cols.first(cols.since(cols.rows(K.SIGNON_FAIL), t0))
    out["power_on_ns"] = np.where(has_on, t0, -1)
    out["boot_s"] = _secs(t0, first)
    out["signon_req_s"] = _secs(t0, first_req)
    out["signon_host_s"] = _secs(cols.at(ok_req, -1), rsp_ns, has_on & (ok_req >= 0)
                                 & (ok_rsp >= 0))
    out["ready_s"] = _secs(t0, ready)
    out["boot_src"] = np.where(
        has_on & cons & (console_first != BIG), "console",
        np.where(has_on & (connect != BIG), "host connect",
                 np.where(has_on & (first_req != BIG), "host 0800", None)))
    out["ready_src"] = cols.source_of(cols.first(cols.since(cols.rows(K.READY), t0)))
    out["attempts"] = attempts
    out["signon_ok"] = has_on & (ready != BIG) & (signed != BIG)
    out["signon_fail"] = fail >= 0
    out["signon_fail_line"] = cols.pick("line", fail)
    out["signon_rc"] = cols.pick("rc", cols.last(rsp))

    # sale: card presented -> 0200 -> 0210 -> RESULT on the terminal
    pres = cols.gmin(cols.rows(K.CARD_PRESENTED))
    after = np.where(pres != BIG, pres, np.iinfo(np.int64).min)
    res = cols.first(cols.since(cols.rows(K.AUTH_RESULT), after))
    has_res = res >= 0
    res_line = cols.pick("line", res)[has_res]
    want = [k for k in dict.fromkeys(("stan", *result_fields)) if k != "pan_masked"]
    fields = line_fields(res_line, {k: RESULT_FIELDS[k] for k in want})
    res_f = {k: np.full(C, None, dtype=object) for k in want}
    for k in want:
        res_f[k][has_res] = fields[k]
    outcome = np.full(C, None, dtype=object)
    outcome[has_res] = result_outcome(res_line)
    areq = cols.since(cols.rows(K.AUTH_REQ), after)
    stan_w = res_f["stan"][cols.cyc[areq]]
    sreq = cols.first(areq[_given(stan_w) & _same(cols.take("stan", areq), stan_w)])
    sreq = np.where(sreq >= 0, sreq, cols.last(areq))
    sreq_ns = cols.at(sreq)
    sreq_stan = cols.pick("stan", sreq)
    arsp = cols.since(cols.rows(K.AUTH_RSP), sreq_ns)
    arsp = cols.first(arsp[_same(cols.take("stan", arsp), sreq_stan[cols.cyc[arsp]])])
    wait = cols.first(cols.rows(K.ROBOT_WAIT))
    res_ns, arsp_ns = cols.at(res), cols.at(arsp)
    out["card_to_auth_s"] = _secs(pres, sreq_ns)
    out["auth_host_s"] = _secs(sreq_ns, arsp_ns)
    out["auth_to_result_s"] = _secs(arsp_ns, res_ns)
    out["card_to_result_s"] = _secs(pres, res_ns)
    waited = cols.pick("waited_s", wait)
    out["robot_wait_s"] = np.where(wait >= 0, np.where(np.isnan(waited), 0.0, waited), np.nan)
    out["outcome"] = outcome
    for k in want:
        if k != "stan":
            out[k] = res_f[k]
    stan = res_f["stan"].copy()
    no_stan = ~_given(stan)
    stan[no_stan] = sreq_stan[no_stan]
    out["stan"] = stan
    if "pan_masked" in result_fields:
        read = cols.first(cols.rows(K.CARD_READ))
        out["pan_masked"] = line_fields(cols.pick("line", read), {"pan": "pan"})["pan"]
    out["result_src"] = cols.source_of(res)
    out["presented_ns"] = np.where(pres != BIG, pres, -1)
    out["result_ns"] = np.where(has_res, res_ns, -1)

    if kinds is not None:
        _apply_kinds(out, np.asarray(kinds, dtype=object))
    if not explain:  # the live end-of-cycle result needs no reasons
        return out
    out["why"] = _why(out, has_on, pres != BIG, sreq >= 0, arsp >= 0, has_res,
                      np.asarray(kinds, dtype=object) if kinds is not None else None)
    for term, gaps in (cannot or {}).items():  # the profile says why, rather than the event
        mine = np.flatnonzero((out["terminal"] == term) & _given(out["why"]))
        for fig, reason in gaps.items():
            default = f"{fig}: {_WHY[fig][1]}"
            out["why"][mine] = [w.replace(default, f"{fig}: {reason}") for w in out["why"][mine]]
    return out


def _apply_kinds(out: dict[str, np.ndarray], kinds: np.ndarray) -> None:
    """Figures of the other procedure are NaN / None in a cycle (a sale has no boot_s)."""
    signon, sale = kinds == "signon", kinds == "sale"
    for f in SIGNON_FIGURES:
        out[f] = np.where(signon, out[f], np.nan)
    for f in SALE_FIGURES:
        out[f] = np.where(sale, out[f], np.nan)
    for k in ("boot_src", "ready_src"):
        out[k] = np.where(signon, out[k], None)
    out["result_src"] = np.where(sale, out["result_src"], None)
    out["attempts"] = np.where(signon, out["attempts"], 0)
    out["signon_ok"] = out["signon_ok"] & signon
    for k in ("outcome", "rc", "auth_code", "rrn", "balance", "stan", "pan_masked"):
        if k in out:
            out[k] = np.where(sale, out[k], None)


def _why(out: dict[str, np.ndarray], has_on: np.ndarray, pres: np.ndarray, req: np.ndarray,
         rsp: np.ndarray, res: np.ndarray, kinds: np.ndarray | None) -> np.ndarray:
    """"figure: missing event; …" for each NaN figure of the cycle's procedure (None: all
    there). Built once per distinct combination of missing events, not once per cycle."""
    C = len(has_on)
    if kinds is None:  # no kinds: a cycle with a power-on is a sign-on, one with a card a sale
        signon, sale = has_on, pres | req | res
    else:
        signon, sale = kinds == "signon", kinds == "sale"
    start_ok = {"boot_s": has_on, "signon_req_s": has_on, "signon_host_s": has_on,
                "ready_s": has_on, "card_to_auth_s": pres, "auth_host_s": req,
                "auth_to_result_s": rsp, "card_to_result_s": pres,
                "robot_wait_s": np.zeros(C, dtype=bool)}
    code = np.zeros(C, dtype=np.int64)
    for i, f in enumerate(_WHY):  # base 3: 0 there, 1 start missing, 2 end missing
        applies = signon if f in SIGNON_FIGURES else sale
        miss = applies & np.isnan(out[f])
        code += np.where(miss, np.where(start_ok[f], 2, 1), 0) * 3 ** i
    uniq, inv = np.unique(code, return_inverse=True)
    texts = np.array(["; ".join(f"{f}: {_WHY[f][(u // 3 ** i) % 3 - 1]}"
                                for i, f in enumerate(_WHY) if (u // 3 ** i) % 3) or None
                      for u in uniq] + [None], dtype=object)[:-1]
    return texts[inv.reshape(-1)]


# --- a run's cycles ------------------------------------------------------------------------------
def fault_windows(events: pd.DataFrame, kinds: np.ndarray | None = None) -> pd.DataFrame:
    """One row per fault occurrence: id, terminal, fault, label, layer, params, on_ns, off_ns
    (NaN while still on), held_s, cycle_id (of its on edge), on_wall_ns, error (of its undo).
    ``kinds``: the events' kind codes when already known."""
    cols = ["id", "terminal", "fault", "label", "layer", "params", "on_ns", "off_ns", "held_s",
            "cycle_id", "on_wall_ns", "error"]
    if events is None or len(events) == 0:
        return pd.DataFrame(columns=cols)
    k = kind_codes(events["kind"]) if kinds is None else kinds
    pon = np.flatnonzero(k == _CODE[EventKind.FAULT_ON.value])
    poff = np.flatnonzero(k == _CODE[EventKind.FAULT_OFF.value])
    if len(pon) == 0:
        return pd.DataFrame(columns=cols)
    on, off = events.iloc[pon], events.iloc[poff]
    on_df = pd.DataFrame({
        "id": take(events, "fault_id", pon),
        "terminal": on["terminal"].to_numpy(dtype=object),
        "fault": _payload_col(on, "fault"),
        "layer": _payload_col(on, "layer"),
        "params": _payload_col(on, "params"),
        "on_ns": on["mono_ns"].to_numpy(dtype=np.int64),
        "on_wall_ns": on["wall_ns"].to_numpy(dtype=np.int64),
        "cycle_id": on["cycle_id"].to_numpy(dtype=np.float64, na_value=np.nan),
    })
    off_df = pd.DataFrame({"id": take(events, "fault_id", poff),
                           "off_ns": off["mono_ns"].to_numpy(dtype=np.int64),
                           "error": _payload_col(off, "error")})
    off_df = off_df.drop_duplicates("id", keep="first")
    w = on_df.merge(off_df, on="id", how="left")
    w["off_ns"] = w["off_ns"].astype("float64")
    w["held_s"] = (w["off_ns"] - w["on_ns"]) / 1e9
    w["label"] = fault_label(w["fault"], w["params"])
    return w[cols]


def _payload_col(df: pd.DataFrame, key: str) -> np.ndarray:
    if key in df.columns:
        return df[key].to_numpy(dtype=object)
    if "data" in df.columns:
        return np.array([d.get(key) if isinstance(d, Mapping) else None for d in df["data"]],
                        dtype=object)
    return np.full(len(df), None, dtype=object)


def fault_label(fault: pd.Series, params: pd.Series) -> np.ndarray:
    """``latency(ms=300, direction=both)`` from a fault's name and parameters (a dict or its
    JSON text)."""
    def text(p: Any) -> str:
        if isinstance(p, Mapping):
            return ", ".join(f"{k}={v}" for k, v in p.items() if v is not None)
        return "" if p is None or (isinstance(p, float) and np.isnan(p)) else str(p)

    ptxt = pd.Series([text(p) for p in params], dtype="string")  # one per fault occurrence
    ptxt = (ptxt.str.replace(r'[{}"]', "", regex=True).str.replace(r"(\w+):", r"\1=", regex=True)
            .str.replace(",(?=\\w+=)", ", ", regex=True))
    base = pd.Series(fault, dtype="string").fillna("fault")
    return (base + "(" + ptxt.fillna("") + ")").to_numpy(dtype=object)


def cycle_faults(cycles: pd.DataFrame, windows: pd.DataFrame) -> pd.DataFrame:
    """Which fault occurrences overlap which cycle (same terminal, on before the cycle's end,
    off after its start): rows (cycle_id, fault row). A terminal's cycles follow each other,
    so a binary search per occurrence finds them (one pass per terminal)."""
    pairs_c, pairs_f = [], []
    if len(windows) == 0 or len(cycles) == 0:
        return pd.DataFrame({"cycle_id": np.zeros(0, np.int64), "fault": np.zeros(0, np.int64)})
    for term, cyc in cycles.groupby("terminal", sort=False, observed=True):
        fw = windows[windows["terminal"] == term]
        if len(fw) == 0:
            continue
        cyc = cyc.sort_values("start_ns")
        starts = cyc["start_ns"].to_numpy(dtype=np.float64)
        ends = np.maximum.accumulate(cyc["end_ns"].to_numpy(dtype=np.float64))
        on = fw["on_ns"].to_numpy(dtype=np.float64)
        off = fw["off_ns"].to_numpy(dtype=np.float64)
        off = np.where(np.isnan(off), np.inf, off)
        lo = np.searchsorted(ends, on, side="right")  # first cycle ending after the on edge
        hi = np.searchsorted(starts, off, side="left")  # cycles starting before the off edge
        k = np.maximum(hi - lo, 0)
        idx = np.repeat(lo, k) + (np.arange(k.sum()) - np.repeat(np.cumsum(k) - k, k))
        pairs_c.append(cyc["cycle_id"].to_numpy()[idx])
        pairs_f.append(np.repeat(fw.index.to_numpy(), k))
    if not pairs_c:
        return pd.DataFrame({"cycle_id": np.zeros(0, np.int64), "fault": np.zeros(0, np.int64)})
    return pd.DataFrame({"cycle_id": np.concatenate(pairs_c), "fault": np.concatenate(pairs_f)})


def figures(events: pd.DataFrame, cycles: pd.DataFrame | None = None, *,
            has_console: bool | Mapping[str, bool] = True,
            faults: pd.DataFrame | None = None,
            cannot: Mapping[str, Mapping[str, str]] | None = None) -> pd.DataFrame:
    """Every figure of every cycle, re-derived from the events, one row per cycle (index
    ``cycle_id``).

    Columns: ``terminal, kind, fault_case``, the sign-on figures ``boot_s signon_req_s
    signon_host_s ready_s`` with ``attempts`` and ``signon_ok``, the sale figures
    ``card_to_auth_s auth_host_s auth_to_result_s card_to_result_s robot_wait_s`` with
    ``outcome rc stan`` (the other result fields are in ``load_run(...).sales``), ``recover_s`` (fault off → READY, or
    → the next approved sale), ``failure`` (why the cycle did not succeed, None when it did)
    and ``why`` (which event each NaN figure lacks).

    ``cycles`` (as ``load_run`` gives: ``cycle_id, terminal, kind, start_mono_ns,
    end_mono_ns``) says which figures apply to a cycle and where it starts and ends (for the
    faults that overlap it); without it every figure is computed wherever its events are.
    ``has_console``: per terminal, whether boot counts to the first console line (else to the
    first host connect). ``boot_src``, ``ready_src`` and ``result_src`` say where the end of
    ``boot_s``, ``ready_s`` and the result figures came from (``console``, ``host connect``,
    ``host 0800`` when the host could not tell whose connect it was,
    ``ecr``: STATUS / RESULT? polled, ``estimate``: 0810 + the profile's configured delay).
    ``cannot``: per terminal, the figures its profile cannot supply and why (their ``why``). ``faults``: the run's fault occurrences (:func:`fault_windows`) when
    already known; else they are read from the events.
    """
    only = None if cycles is None else cycles["cycle_id"].to_numpy(dtype=np.int64)
    cols = Columns.from_frame(events, only=only)
    kinds = None
    if cycles is not None:
        kinds = pd.Series(cycles["kind"].to_numpy(dtype=object),
                          index=cycles["cycle_id"].to_numpy(dtype=np.int64)).reindex(
            cols.ids).to_numpy(dtype=object)
    d = derive_cycles(cols, has_console=has_console, kinds=kinds, result_fields=("rc",),
                      cannot=cannot)
    df = pd.DataFrame({k: pd.Series(v, dtype=object) if v.dtype == object else v
                       for k, v in d.items()}).set_index("cycle_id")
    if cycles is not None:
        t = cycles.set_index("cycle_id")["terminal"].astype(object).reindex(df.index)
        df["terminal"] = t.where(t.notna(), df["terminal"])
        df["kind"] = _obj(kinds, df.index)
    else:
        df["kind"] = _obj(np.where(df["power_on_ns"] >= 0, "signon",
                                   np.where(df["outcome"].notna() | (df["presented_ns"] >= 0),
                                            "sale", "other")).astype(object), df.index)
    _faults_and_recovery(df, events, cycles, cols, faults)
    df["failure"] = _obj(_failure(df), df.index)
    order = ["terminal", "kind", "fault_case", *SIGNON_FIGURES, "attempts", "signon_ok",
             *SALE_FIGURES, "outcome", "rc", "stan", "recover_s", "failure", "why", "signon_rc",
             "boot_src", "ready_src", "result_src", "power_on_ns", "presented_ns", "result_ns"]
    return df[order]


def _obj(values: np.ndarray, index: pd.Index) -> pd.Series:
    """Text columns stay object arrays with None for "none" (no per-row conversion to
    Arrow strings: a run has hundreds of thousands of cycles)."""
    return pd.Series(np.asarray(values, dtype=object), index=index, dtype=object)


def _spans(df: pd.DataFrame, events: pd.DataFrame, cycles: pd.DataFrame | None,
           cols: Columns) -> pd.DataFrame:
    """Each cycle's [start, end] on the monotonic clock: the cycles table's, else its events'
    first and last stamp; a cycle not ended yet runs to its last event."""
    first = cols.gmin(cols.cyc >= 0)
    lastv = np.full(cols.C, -1, dtype=np.int64)
    m = cols.cyc >= 0
    np.maximum.at(lastv, cols.cyc[m], cols.mono[m])
    start = np.where(first != BIG, first, np.nan).astype(np.float64)
    end = np.where(lastv >= 0, lastv, np.nan).astype(np.float64)
    if cycles is not None and "start_mono_ns" in cycles.columns:
        c = cycles.set_index("cycle_id")
        s = c["start_mono_ns"].reindex(df.index).to_numpy(dtype=np.float64, na_value=np.nan)
        e = c["end_mono_ns"].reindex(df.index).to_numpy(dtype=np.float64, na_value=np.nan)
        start = np.where(np.isnan(s), start, s)
        end = np.where(np.isnan(e), end, e)
    end = np.where(np.isnan(end), start, end)
    return pd.DataFrame({"cycle_id": df.index.to_numpy(), "terminal": df["terminal"].to_numpy(),
                         "start_ns": start, "end_ns": end})


def _faults_and_recovery(df: pd.DataFrame, events: pd.DataFrame, cycles: pd.DataFrame | None,
                         cols: Columns, faults: pd.DataFrame | None) -> None:
    """``fault_case`` (the faults on during the cycle, "none") and ``recover_s``."""
    df["fault_case"] = _obj(np.full(len(df), "none", dtype=object), df.index)
    df["recover_s"] = np.nan
    w = fault_windows(events, cols.kind) if faults is None else faults
    if len(w) == 0:
        return
    spans = _spans(df, events, cycles, cols)
    pairs = cycle_faults(spans, w.reset_index(drop=True))
    if len(pairs) == 0:
        return
    pairs["label"] = w["label"].to_numpy(dtype=object)[pairs["fault"].to_numpy()]
    pairs["off_ns"] = w["off_ns"].to_numpy(dtype=np.float64)[pairs["fault"].to_numpy()]
    uniq = pairs.drop_duplicates(["cycle_id", "label"]).sort_values(["cycle_id", "label"])
    rank = uniq.groupby("cycle_id").cumcount().to_numpy()
    joined = pd.Series("", index=pd.Index(uniq["cycle_id"].unique()), dtype=object)
    for r in range(int(rank.max()) + 1):  # one pass per overlapping fault, not per cycle
        part = uniq[rank == r]
        sep = "" if r == 0 else " + "
        joined.loc[part["cycle_id"].to_numpy()] = (
            joined.loc[part["cycle_id"].to_numpy()].to_numpy() + sep
            + part["label"].to_numpy(dtype=object))
    case = joined
    df.loc[case.index, "fault_case"] = case.to_numpy()
    g = pairs.groupby("cycle_id")["off_ns"]
    off = g.max().where(~pairs["off_ns"].isna().groupby(pairs["cycle_id"]).any())
    off = off.reindex(df.index)  # NaN: no fault, or one never went off
    faulted = df.index.isin(case.index)
    still_on = faulted & np.isnan(off.to_numpy())
    offv = off.to_numpy(dtype=np.float64)
    # sign-on: fault off -> READY (0 when READY came first)
    ready_ns = df["power_on_ns"].to_numpy(dtype=np.float64) + df["ready_s"].to_numpy() * 1e9
    so = (df["kind"] == "signon").to_numpy() & faulted & ~still_on
    rec = np.where(so, np.maximum(0.0, (ready_ns - offv) / 1e9), np.nan)
    # sale: fault off -> this sale's result if approved, else the terminal's next approved one
    sale = (df["kind"] == "sale").to_numpy() & faulted & ~still_on
    approved_here = sale & (df["outcome"] == "approved").to_numpy()
    res_ns = df["result_ns"].to_numpy(dtype=np.float64)
    rec = np.where(approved_here, np.maximum(0.0, (res_ns - offv) / 1e9), rec)
    need = sale & ~approved_here
    if need.any():
        ok = df[(df["outcome"] == "approved").to_numpy() & (df["result_ns"] >= 0).to_numpy()]
        right = pd.DataFrame({"terminal": ok["terminal"].astype(object).to_numpy(),
                              "t": ok["result_ns"].to_numpy(dtype=np.float64)}).sort_values("t")
        left = pd.DataFrame({"terminal": df["terminal"].to_numpy(dtype=object)[need],
                             "t": offv[need], "pos": np.flatnonzero(need)}).sort_values("t")
        left["off"] = left["t"]
        right["res"] = right["t"]
        m = pd.merge_asof(left, right, on="t", by="terminal", direction="forward")
        rec[m["pos"].to_numpy()] = ((m["res"] - m["off"]) / 1e9).to_numpy()
    df["recover_s"] = rec
    extra = np.full(len(df), None, dtype=object)
    nan = faulted & np.isnan(rec) & (so | sale | still_on)
    extra[nan & still_on] = "recover_s: a fault did not go off"
    extra[nan & ~still_on & so] = "recover_s: no READY after the fault went off"
    extra[nan & ~still_on & sale] = "recover_s: no approved sale after the fault went off"
    why = df["why"].to_numpy(dtype=object).copy()
    has = extra != None  # noqa: E711 (elementwise)
    base, add = why[has], extra[has].copy()
    some = base != None  # noqa: E711 (elementwise)
    add[some] = base[some] + "; " + add[some]
    why[has] = add
    df["why"] = _obj(why, df.index)


def _failure(df: pd.DataFrame) -> np.ndarray:
    """Why a cycle did not succeed, in a few classes (None: it did): sign-on cycles by the
    first missing step, sales by their outcome."""
    kind = df["kind"].to_numpy(dtype=object)
    rc = df["signon_rc"].to_numpy(dtype=object)
    host_ok = ~np.isnan(df["signon_host_s"].to_numpy())
    cls = np.select([df["signon_ok"].to_numpy(bool), (df["power_on_ns"] < 0).to_numpy(),
                     np.isnan(df["signon_req_s"].to_numpy()), ~host_ok & (rc != None),  # noqa: E711
                     ~host_ok], [0, 1, 2, 3, 4], default=5)
    out = np.array([None, "no power-on", "no 0800 (boot or network)", None,
                    "no 0810 (host or network)", "no READY"], dtype=object)[cls]
    refused = np.flatnonzero(cls == 3)
    out[refused] = ("sign-on refused (rc=" + pd.Series(rc[refused], dtype="string") + ")"
                    ).to_numpy(dtype=object)
    outcome = df["outcome"].to_numpy(dtype=object)
    sale = np.where(outcome == "approved", None,
                    np.where(outcome == None, "no result", outcome))  # noqa: E711
    return np.where(kind == "signon", out, np.where(kind == "sale", sale, None))
