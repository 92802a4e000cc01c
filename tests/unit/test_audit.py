"""``rig audit``: a results directory from a real short run (sign-on, power cycle, sale) is
clean; a PAN, track or key planted in a log, the store, a JSON report or a Parquet export is
found (exit 1). Also: the lab child's config file is 0600, removed on close, swept when stale."""

from __future__ import annotations

import json
import os
import shutil
import sqlite3
import stat
import time
from pathlib import Path

import pytest
from typer.testing import CliRunner

from rig import open_local
from rig.cards.profiles import load_cards
from rig.cli import app, audit_path
from tests.labcfg import virtual_config

PAN = load_cards()["visa_credit"].pan


@pytest.fixture(scope="module")
def clean_results(tmp_path_factory) -> Path:
    tmp = tmp_path_factory.mktemp("audit")
    cfg = virtual_config(tmp, time_scale=0.1)
    results = tmp / "results"
    results.mkdir()
    stale = results / f".{cfg.name}-stale.yaml"  # left by a kill -9 of an earlier rig
    stale.write_text("tmk: 00112233445566778899AABBCCDDEEFF\n")
    old = time.time() - 3600
    os.utime(stale, (old, old))
    with open_local(cfg, results=results) as rig:
        assert not stale.exists()
        child = list(results.glob(f".{cfg.name}-*.yaml"))
        assert len(child) == 1  # the lab child's config (the config came as an object)
        assert stat.S_IMODE(child[0].stat().st_mode) == 0o600
        rig.ensure_ready("T1")
        rig.power_cycle("T1")
        rig.wait_signon("T1")
        r = rig.sale("T1", amount="1.00", card="visa_credit", entry="chip")
        assert r.outcome == "approved", r
    assert not list(results.glob(f".{cfg.name}-*.yaml"))  # removed on close
    return results


def _copy(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst


def test_real_results_are_clean(clean_results):
    report = audit_path(clean_results)
    assert report["files"] >= 3 and report["findings"] == [], report["findings"][:5]
    res = CliRunner().invoke(app, ["audit", str(clean_results), "--json"])
    assert res.exit_code == 0, res.output
    assert json.loads(res.output)["findings"] == []


def test_planted_pan_in_log(clean_results, tmp_path):
    d = _copy(clean_results, tmp_path / "r")
    log = next(d.glob("*-lab.log"), None) or d / "x-lab.log"
    with open(log, "a") as f:
        f.write(f"2026-11-30 06:00:00,000 ERROR rig.sim: card {PAN[:4]} {PAN[4:8]} "
                f"{PAN[8:12]} {PAN[12:]} declined\n")
    res = CliRunner().invoke(app, ["audit", str(d), "--json"])
    assert res.exit_code == 1, res.output
    found = json.loads(res.output)["findings"]
    assert [f["kind"] for f in found] == ["pan"] and found[0]["file"] == str(log)
    assert PAN not in res.output and found[0]["sample"].startswith(PAN[:6])


def test_planted_pan_and_track_in_store(clean_results, tmp_path):
    d = _copy(clean_results, tmp_path / "r")
    db = next(d.glob("*.db"))
    con = sqlite3.connect(db)
    rowid = con.execute("SELECT max(rowid) FROM events").fetchone()[0]
    con.execute("UPDATE events SET data_json = ? WHERE rowid = ?",
                (json.dumps({"track2": f";{PAN}=25122010000000000?"}), rowid))
    con.commit()
    con.close()
    report = audit_path(d)
    assert [(f["where"], f["kind"]) for f in report["findings"]] == [
        (f"events.data_json rowid {rowid}", "track2")]


def test_planted_key_and_pan_in_json_report(clean_results, tmp_path):
    d = _copy(clean_results, tmp_path / "r")
    (d / "report.json").write_text(json.dumps(
        {"config": {"tmk": "00112233445566778899AABBCCDDEEFF"}, "pan": PAN}, indent=1))
    kinds = sorted(f["kind"] for f in audit_path(d)["findings"])
    assert kinds == ["key", "pan"]
    assert CliRunner().invoke(app, ["audit", str(d / "report.json")]).exit_code == 1


def test_planted_pan_in_parquet_export(tmp_path):
    pa = pytest.importorskip("pyarrow")
    import pyarrow.parquet as pq

    pq.write_table(pa.table({"n": [1, 2], "note": ["ok", f"pan {PAN}"]}), tmp_path / "e.parquet")
    found = audit_path(tmp_path)["findings"]
    assert [(f["where"], f["kind"]) for f in found] == [("column note row 1", "pan")]


def test_client_temp_config_is_0600(tmp_path, monkeypatch):
    import rig.client as client

    seen = {}

    class Stop(Exception):
        pass

    def fake_spawn(path, res, **kw):
        seen["mode"] = stat.S_IMODE(Path(path).stat().st_mode)
        seen["delete"] = kw.get("delete_config")
        Path(path).unlink()  # what the service does once it has read it
        raise Stop

    monkeypatch.setattr(client, "spawn", fake_spawn)
    with pytest.raises(Stop):
        client.connect(virtual_config(tmp_path), results=tmp_path / "results")
    assert seen == {"mode": 0o600, "delete": True}
