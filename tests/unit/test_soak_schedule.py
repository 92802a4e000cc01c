"""Schedule files: cron windows checked with file:line errors; when a window is open."""

from __future__ import annotations

from datetime import datetime

import pytest

from rig.core.errors import ConfigError
from rig.soak.schedule import Window, load_schedule


def test_the_shipped_schedule_loads():
    (s,) = load_schedule("configs/schedule.yaml")
    assert s["name"] == "weeknights" and s["duration_s"] == 11 * 3600
    assert s["campaign"].endswith("configs/campaigns/nightly.yaml")


@pytest.mark.parametrize("window, problem", [
    ("{start: 'every night', duration: 10h}", "not a cron expression"),
    ("{start: '0 * * * *', duration: 2h}", "windows overlap"),
])
def test_bad_windows_name_file_and_line(tmp_path, window, problem):
    p = tmp_path / "s.yaml"
    p.write_text(f"schedules:\n  - name: x\n    campaign: c.yaml\n    window: {window}\n")
    with pytest.raises(ConfigError, match=rf"s\.yaml:4.*{problem}"):
        load_schedule(p)


def test_open_since_and_next_start():
    w = Window(start="0 20 * * 1-5", duration="11h")  # Mon-Fri 20:00 -> 07:00
    mon_21 = datetime(2026, 11, 30, 21, 0).astimezone()  # a Monday
    assert w.open_since(mon_21) == datetime(2026, 11, 30, 20, 0).astimezone()
    tue_06 = datetime(2026, 12, 1, 6, 59).astimezone()
    assert w.open_since(tue_06) is not None
    tue_08 = datetime(2026, 12, 1, 8, 0).astimezone()
    assert w.open_since(tue_08) is None
    assert w.next_start(tue_08) == datetime(2026, 12, 1, 20, 0).astimezone()
    sat_21 = datetime(2026, 12, 5, 21, 0).astimezone()
    assert w.open_since(sat_21) is None  # no window on Saturday night
