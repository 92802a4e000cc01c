"""A synthetic timeline: sign-on and sale cycles as the rig records them, with known figures.

For tests, benchmarks and trying the analysis without a lab. :func:`synth_run` draws every
delay itself, builds the events (the same kinds, sources, payload and ordering as a real run,
plus instrument chatter), and returns the figures it drew as ``truth`` — so a derivation can be
checked against numbers computed by hand, not by the code under test. Vectorised: ten million
events take seconds.

    s = synth_run(cycles=10_000, terminals=4, boot_ms=(700, 60))
    s.events   # like load_run(...).events (typed columns, payload columns, no data dicts)
    s.cycles   # like load_run(...).cycles (cycle_id, terminal, n, kind, state, start/end)
    s.truth    # the figures drawn, one row per cycle
    s.rows()   # the events as store rows (for Store.append_events)
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from ..timeline.events import EventKind
from .figures import KINDS

MS = 1_000_000  # ns
K = EventKind


@dataclass
class Synth:
    events: pd.DataFrame
    cycles: pd.DataFrame
    truth: pd.DataFrame
    run_id: int = 1

    def rows(self, start: int = 0, stop: int | None = None) -> list[tuple[Any, ...]]:
        """Events ``start:stop`` as store rows (run_id, cycle_id, mono_ns, wall_ns, kind, source,
        terminal, clock, data_json)."""
        ev = self.events.iloc[start:stop]
        cyc = ev["cycle_id"].astype("Int64").astype(object).where(ev["cycle_id"].notna(), None)
        return list(zip([self.run_id] * len(ev), cyc, ev["mono_ns"].tolist(),
                        ev["wall_ns"].tolist(), ev["kind"].astype(str).tolist(),
                        ev["source"].astype(str).tolist(), ev["terminal"].astype(object).tolist(),
                        ev["clock"].astype(str).tolist(), data_json(ev).tolist(), strict=True))


def data_json(ev: pd.DataFrame) -> pd.Series:
    """The events' payload columns as the store's ``data_json`` text (vectorised)."""
    out = pd.Series("", index=ev.index, dtype="string")
    sep = pd.Series("", index=ev.index, dtype="string")
    for col, quoted in (("stan", True), ("rc", True), ("line", True), ("waited_s", False),
                        ("fault_id", True), ("fault", True), ("layer", True),
                        ("params", False)):
        v = ev[col]
        has = v.notna()
        if not has.any():
            continue
        key = "id" if col == "fault_id" else col
        text = v.astype("string")
        piece = (f'"{key}":"' + text + '"') if quoted else (f'"{key}":' + text)
        out = out.where(~has, out + sep + piece)
        sep = sep.where(~has, ",")
    return "{" + out + "}"


def _gauss(rng: np.random.Generator, n: int, mean: float, sd: float, lo: float) -> np.ndarray:
    return np.maximum(lo, rng.normal(mean, sd, n))


def synth_run(cycles: int = 1000, terminals: int = 4, *, sale_share: float = 0.3,
              boot_ms: tuple[float, float] = (700.0, 60.0), seed: int = 0,
              p_retry: float = 0.05, p_refused: float = 0.02, p_declined: float = 0.05,
              p_no_response: float = 0.02, p_fault: float = 0.05, p_overlap: float = 0.3,
              noise: int = 8, run_id: int = 1, t0_ns: int = 10**12) -> Synth:
    """``cycles`` cycles shared by ``terminals`` terminals (each does its cycles one after the
    other; terminals run in parallel), a share ``sale_share`` of them sales, the rest sign-ons
    (power cycle → READY). Sign-ons: boot ~ normal(``boot_ms``), a share ``p_retry`` whose
    first 0800 goes unanswered (a second attempt after a time-out), ``p_refused`` answered
    rc=96 (no READY). Sales: ``p_declined`` answered rc=51, ``p_no_response`` never answered
    (the terminal shows failed rc=98). ``p_fault`` of the sign-ons have a fault on from
    power-on to about READY (``p_overlap`` of those a second, overlapping one). ``noise``:
    instrument chatter (PSU / robot lines) per cycle."""
    rng = np.random.default_rng(seed)
    names = np.array([f"T{i + 1}" for i in range(terminals)], dtype=object)
    term = np.arange(cycles) % terminals
    is_sale = rng.random(cycles) < sale_share
    # durations, then each terminal's cycles back to back
    n = cycles
    boot = _gauss(rng, n, boot_ms[0], boot_ms[1], max(1.0, boot_ms[0] * 0.3)) * MS
    login, sync, ready_d = 40 * MS, 15 * MS, _gauss(rng, n, 8, 1, 1) * MS
    host = _gauss(rng, n, 2.0, 0.3, 0.2) * MS
    retry = ~is_sale & (rng.random(n) < p_retry)
    refused = ~is_sale & (rng.random(n) < p_refused)
    off_s = 300 * MS
    timeout, backoff = 3000 * MS, 300 * MS
    wait = np.where(rng.random(n) < 0.3, rng.exponential(200, n), 0.0) * MS
    move = _gauss(rng, n, 300, 20, 100) * MS
    read = _gauss(rng, n, 120, 5, 50) * MS
    c2a = read + _gauss(rng, n, 8, 2, 1) * MS
    ahost = _gauss(rng, n, 4, 0.5, 0.5) * MS
    a2r = _gauss(rng, n, 2, 0.3, 0.3) * MS
    declined = is_sale & (rng.random(n) < p_declined)
    noresp = is_sale & ~declined & (rng.random(n) < p_no_response)
    auth_timeout = 8000 * MS

    so_len = off_s + boot + login + sync + 1 * MS + np.where(retry, timeout + backoff, 0) + (
        host + 1 * MS + ready_d + 5 * MS)
    sa_len = 3 * MS + wait + move + c2a + np.where(noresp, auth_timeout, ahost + a2r) + 5 * MS
    length = np.where(is_sale, sa_len, so_len).astype(np.int64) + 2 * MS  # + idle between cycles
    start = np.zeros(n, dtype=np.int64)
    for t in range(terminals):  # one cumsum per terminal (not per cycle)
        idx = np.flatnonzero(term == t)
        start[idx] = t0_ns + t * 7 * MS + np.concatenate([[0], np.cumsum(length[idx])[:-1]])
    order = np.argsort(start, kind="stable")
    cycle_id = np.empty(n, dtype=np.int64)
    cycle_id[order] = np.arange(1, n + 1)  # ids in start order, as the store gives them
    nth = np.zeros(n, dtype=np.int64)
    for t in range(terminals):
        idx = np.flatnonzero(term == t)
        nth[idx] = np.arange(1, len(idx) + 1)

    rows: list[dict[str, Any]] = []  # one entry per template row: arrays over the cycles

    def add(mask: np.ndarray, kind: EventKind, source: str | np.ndarray, at: np.ndarray,
            clock: str = "kernel", **payload: Any) -> None:
        rows.append({"mask": mask, "kind": kind.value, "source": source, "at": at,
                     "clock": clock, "payload": payload})

    so, sa = ~is_sale, is_sale
    tname = names[term]
    console = np.array([f"{t}.console" for t in names], dtype=object)[term]
    stan1 = (cycle_id * 3) % 1_000_000
    # --- sign-on cycles
    on = start + off_s
    add(so, K.POWER_OFF, "psu1", start + MS // 10)
    add(so, K.POWER_ON, "psu1", on)
    b_done = on + boot.astype(np.int64)
    add(so, K.BOOT_DONE, console, b_done, line=_lines("BOOT done", n))
    add(so, K.LOGIN, console, b_done + login)
    synced = b_done + login + sync
    add(so, K.CONSOLE_LINE, console, synced, line=_lines("CLOCK sync", n))
    add(so, K.HOST_CONNECT, "host", synced + MS // 2, clock="thread")
    req1 = synced + MS
    add(so, K.SIGNON_REQ, "host", req1, stan=_stan(stan1))
    add(so & retry, K.SIGNON_FAIL, console, req1 + timeout, line=_lines("SIGNON fail timeout", n))
    req2 = req1 + timeout + backoff
    add(so & retry, K.SIGNON_REQ, "host", req2, stan=_stan(stan1 + 1))
    ans = np.where(retry, req2, req1)
    rsp = ans + host.astype(np.int64)
    add(so, K.SIGNON_RSP, "host", rsp, stan=_stan(np.where(retry, stan1 + 1, stan1)),
        rc=np.where(refused, "96", "00").astype(object))
    add(so & ~refused, K.SIGNON_OK, console, rsp + MS, line=_lines("SIGNON ok", n))
    add(so & refused, K.SIGNON_FAIL, console, rsp + MS, line=_lines("SIGNON fail rc=96", n))
    ready = rsp + MS + ready_d.astype(np.int64)
    add(so & ~refused, K.READY, console, ready, line=_lines("READY", n))
    add(so, K.HOST_DISCONNECT, "host", rsp + MS // 5, clock="thread")
    # faults: on at power-on, off around READY (before or after it, never after the cycle)
    end_so = np.where(refused, rsp + MS, ready) + 2 * MS
    faulted = so & (rng.random(n) < p_fault)
    second = faulted & (rng.random(n) < p_overlap)

    def off_edge(lo: float) -> np.ndarray:
        before = on + ((ready - on) * rng.uniform(lo, 0.99, n)).astype(np.int64)
        after = ready + rng.integers(0, int(1.5 * MS), n)
        return np.minimum(np.where(rng.random(n) < 0.5, before, after), end_so - MS // 10)

    f_off = off_edge(0.5)
    f2_on = on + ((ready - on) * rng.uniform(0.1, 0.4, n)).astype(np.int64)
    f2_off = off_edge(0.45)
    fid = ("f" + pd.Series(np.arange(2 * n)).astype("string")).to_numpy(dtype=object) if (
        p_fault) else None
    if fid is not None:
        add(faulted, K.FAULT_ON, "faults", on + 1000, clock="thread", fault_id=fid[:n],
            fault=_const("latency", n), layer=_const("proxy", n),
            params=_const('{"ms":300}', n))
        add(faulted, K.FAULT_OFF, "faults", f_off, clock="thread", fault_id=fid[:n],
            fault=_const("latency", n), layer=_const("proxy", n))
        add(second, K.FAULT_ON, "faults", f2_on, clock="thread", fault_id=fid[n:],
            fault=_const("host_delay", n), layer=_const("host", n),
            params=_const('{"ms":500}', n))
        add(second, K.FAULT_OFF, "faults", f2_off, clock="thread", fault_id=fid[n:],
            fault=_const("host_delay", n), layer=_const("host", n))
    # --- sale cycles
    add(sa, K.SALE_START, console, start + 2 * MS, line=_lines("SALE start", n))
    add(sa, K.CARD_WAIT, console, start + 3 * MS, line=_lines("CARD wait", n))
    waited = start + 3 * MS + wait.astype(np.int64)
    add(sa, K.ROBOT_WAIT, "robot1", waited, clock="thread", waited_s=wait / 1e9)
    pres = waited + move.astype(np.int64)
    add(sa, K.CARD_PRESENTED, "robot1", pres, clock="thread")
    add(sa, K.CARD_READ, console, pres + read.astype(np.int64),
        line=_lines("CARD read mode=chip pan=622202*********0128", n))
    areq = pres + c2a.astype(np.int64)
    stan2 = _stan(stan1 + 2)
    add(sa, K.AUTH_REQ, "host", areq, stan=stan2)
    arsp = areq + ahost.astype(np.int64)
    rc = np.where(declined, "51", "00").astype(object)
    add(sa & ~noresp, K.AUTH_RSP, "host", arsp, stan=stan2, rc=rc)
    res = np.where(noresp, areq + auth_timeout, arsp + a2r.astype(np.int64))
    outcome = np.where(noresp, "failed", np.where(declined, "declined", "approved")).astype(object)
    rc_shown = np.where(noresp, "98", rc).astype(object)
    line = (pd.Series(["RESULT "] * n, dtype="string") + pd.Series(outcome, dtype="string")
            + " rc=" + pd.Series(rc_shown, dtype="string") + " auth=123456 rrn=000000000001 stan="
            + pd.Series(stan2, dtype="string")).to_numpy(dtype=object)
    add(sa, K.AUTH_RESULT, console, res, line=line)
    end = np.where(is_sale, res + 2 * MS, end_so)
    # --- chatter: PSU queries through the cycle, robot lines during a sale's move
    for j in range(noise):
        frac = (j + 0.5) / max(noise, 1)
        at = start + ((end - start) * frac).astype(np.int64) + 7
        add(so, K.PSU_IO, "psu1", at, clock="kernel")
        add(sa, K.ROBOT_IO, "robot1", waited + (move * frac).astype(np.int64) + 3, clock="thread")

    events = _assemble(rows, n, cycle_id, tname)
    cyc = pd.DataFrame({"cycle_id": cycle_id, "terminal": tname, "n": nth,
                        "kind": np.where(is_sale, "sale", "signon").astype(object),
                        "state": "completed", "start_mono_ns": start, "end_mono_ns": end,
                        "start_wall_ns": start + 1_700_000_000 * 10**9})
    cyc = cyc.sort_values("cycle_id").reset_index(drop=True)
    nan = np.nan
    last_off = np.where(second, np.maximum(f_off, f2_off), f_off)
    truth = pd.DataFrame({
        "cycle_id": cycle_id, "terminal": tname,
        "boot_s": np.where(so, boot.astype(np.int64) / 1e9, nan),
        "signon_req_s": np.where(so, (req1 - on) / 1e9, nan),
        "signon_host_s": np.where(so & ~refused, host.astype(np.int64) / 1e9, nan),
        "ready_s": np.where(so & ~refused, (ready - on) / 1e9, nan),
        "attempts": np.where(so, 1 + retry, 0),
        "signon_ok": so & ~refused,
        "card_to_auth_s": np.where(sa, c2a.astype(np.int64) / 1e9, nan),
        "auth_host_s": np.where(sa & ~noresp, ahost.astype(np.int64) / 1e9, nan),
        "auth_to_result_s": np.where(sa & ~noresp, a2r.astype(np.int64) / 1e9, nan),
        "card_to_result_s": np.where(sa, (res - pres) / 1e9, nan),
        "robot_wait_s": np.where(sa, wait / 1e9, nan),
        "outcome": np.where(sa, outcome, None),
        "fault_case": np.where(second, "host_delay(ms=500) + latency(ms=300)",
                               np.where(faulted, "latency(ms=300)", "none")),
        "recover_s": np.where(faulted & ~refused, np.maximum(0, ready - last_off) / 1e9, nan),
    }).sort_values("cycle_id").set_index("cycle_id")
    return Synth(events, cyc, truth, run_id)


def _stan(x: np.ndarray) -> np.ndarray:
    return pd.Series(x % 1_000_000).astype("string").str.zfill(6).to_numpy(dtype=object)


def _const(v: str, n: int) -> np.ndarray:
    return np.full(n, v, dtype=object)


def _lines(text: str, n: int) -> np.ndarray:
    return _const(f"0 INFO {text}", n)


def _assemble(rows: list[dict[str, Any]], n: int, cycle_id: np.ndarray,
              tname: np.ndarray) -> pd.DataFrame:
    """The template rows flattened into one events frame in recording order."""
    parts: dict[str, list[np.ndarray]] = {c: [] for c in (
        "cycle_id", "mono_ns", "kind", "source", "terminal", "clock", "stan", "rc", "line",
        "waited_s", "fault_id", "fault", "layer", "params")}
    for r in rows:
        idx = np.flatnonzero(r["mask"])
        m = len(idx)
        if m == 0:
            continue
        parts["cycle_id"].append(cycle_id[idx])
        parts["mono_ns"].append(np.asarray(r["at"], dtype=np.int64)[idx])
        parts["kind"].append(np.full(m, KINDS.index(r["kind"]), dtype=np.int16))
        src = r["source"]
        parts["source"].append(src[idx] if isinstance(src, np.ndarray) else _const(src, m))
        parts["terminal"].append(tname[idx])
        parts["clock"].append(_const(r["clock"], m))
        for c in ("stan", "rc", "line", "fault_id", "fault", "layer", "params"):
            v = r["payload"].get(c)
            parts[c].append(v[idx] if v is not None else np.full(m, None, dtype=object))
        w = r["payload"].get("waited_s")
        parts["waited_s"].append(w[idx] if w is not None else np.full(m, np.nan))
    cat = {c: np.concatenate(v) for c, v in parts.items()}
    order = np.argsort(cat["mono_ns"], kind="stable")
    ev = pd.DataFrame({
        "seq": np.arange(1, len(order) + 1, dtype=np.int64),
        "cycle_id": cat["cycle_id"][order],
        "mono_ns": cat["mono_ns"][order],
        "wall_ns": cat["mono_ns"][order] + 1_700_000_000 * 10**9,
        "kind": pd.Categorical.from_codes(cat["kind"][order], categories=list(KINDS)),
        "source": pd.Categorical(cat["source"][order]),
        "terminal": pd.Categorical(cat["terminal"][order]),
        "clock": pd.Categorical(cat["clock"][order]),
    })
    for c in ("stan", "rc", "line", "fault_id", "fault", "layer", "params"):
        ev[c] = pd.Categorical(cat[c][order])  # as load_run gives payload: few distinct values
    ev["waited_s"] = cat["waited_s"][order]
    return ev
