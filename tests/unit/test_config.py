"""Lab config: both shipped labs validate; bad input names file, line and field."""

from pathlib import Path

import pytest

from rig.config import load_lab
from rig.core.errors import ConfigError

ROOT = Path(__file__).resolve().parents[2]
VIRTUAL = (ROOT / "configs/labs/virtual.yaml").read_text()


@pytest.mark.parametrize("name", ["virtual.yaml", "bench-example.yaml"])
def test_shipped_labs_validate(name):
    cfg = load_lab(ROOT / "configs/labs" / name)
    assert cfg.terminals
    snap = cfg.snapshot()
    assert all(t["tmk"] == "****" for t in snap["terminals"].values())


def test_virtual_lab_has_four_terminals():
    cfg = load_lab(ROOT / "configs/labs/virtual.yaml")
    assert list(cfg.terminals) == ["T1", "T2", "T3", "T4"]
    assert {t.key_mode for t in cfg.terminals.values()} == {"001", "003", "004"}


def _write(tmp_path, text):
    p = tmp_path / "lab.yaml"
    p.write_text(text)
    return p


def _line_of(text, needle):
    return next(i for i, line in enumerate(text.splitlines(), 1) if needle in line)


def test_wrong_type_names_file_line_field(tmp_path):
    text = VIRTUAL.replace("channels: 4\n", "channels: four\n", 1)
    p = _write(tmp_path, text)
    with pytest.raises(ConfigError) as e:
        load_lab(p)
    msg = str(e.value)
    assert f"{p}:{_line_of(text, 'channels: four')}: instruments.psu1.channels:" in msg


def test_unknown_key_names_file_line_field(tmp_path):
    text = VIRTUAL.replace("  processing_ms: 2\n", "  processing_ms: 2\n  procesing_ms: 3\n", 1)
    p = _write(tmp_path, text)
    with pytest.raises(ConfigError) as e:
        load_lab(p)
    assert f"{p}:{_line_of(text, 'procesing_ms')}: host.procesing_ms: unknown key" in str(e.value)


def test_voltage_above_model_limit(tmp_path):
    text = VIRTUAL.replace("power: {psu: psu1, channel: 3, voltage: 12.0",
                           "power: {psu: psu1, channel: 3, voltage: 24.0", 1)
    p = _write(tmp_path, text)
    with pytest.raises(ConfigError) as e:
        load_lab(p)
    msg = str(e.value)
    line = _line_of(text, "voltage: 24.0")
    assert f"{p}:{line}: terminals.T3.power.voltage: 24.0 V is above model 'vlab-pos' voltage_max 12.6 V" in msg


def test_yaml_syntax_error_has_line(tmp_path):
    p = _write(tmp_path, "name: x\nmodels: [\n")
    with pytest.raises(ConfigError, match=r"lab.yaml:\d+: YAML syntax"):
        load_lab(p)


def test_missing_file():
    with pytest.raises(ConfigError, match="cannot read"):
        load_lab("/nonexistent/lab.yaml")


def test_bad_tmk(tmp_path):
    text = VIRTUAL.replace('tmk: "11111111111111112222222222222222"', 'tmk: "1234"', 1)
    p = _write(tmp_path, text)
    with pytest.raises(ConfigError, match=r"terminals.T1.tmk"):
        load_lab(p)
