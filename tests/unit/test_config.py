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


# --- PDUs through pdudaemon ------------------------------------------------------------------

T2_PSU = "power: {psu: psu1, channel: 2, voltage: 12.0, current_limit: 1.5, off_s: 0.3}"
PDUS = "\npdus:\n  rack1:\n    url: http://127.0.0.1:16421\n    hostname: apc-rack1\n    ports: 8\n"


def _pdu_lab(tmp_path, power="power: {pdu: rack1, port: 2, off_s: 0.3}", pdus=PDUS):
    assert VIRTUAL.count(T2_PSU) == 1
    text = VIRTUAL.replace(T2_PSU, power) + pdus
    return text, _write(tmp_path, text)


def test_a_terminal_on_a_pdu_outlet(tmp_path):
    _, p = _pdu_lab(tmp_path)
    cfg = load_lab(p)
    power = cfg.terminals["T2"].power
    assert (power.pdu, power.port, power.outlet, power.channel) == ("rack1", 2, 2, None)
    assert cfg.pdus["rack1"].url == "http://127.0.0.1:16421"
    assert cfg.pdus["rack1"].hostname == "apc-rack1"
    assert cfg.terminals["T1"].power.outlet == 1  # a PSU channel
    assert cfg.snapshot()["pdus"]["rack1"]["hostname"] == "apc-rack1"


@pytest.mark.parametrize("power,pdus,field,problem", [
    ("power: {pdu: rack9, port: 2}", PDUS, "terminals.T2.power.pdu",
     "no pdu 'rack9' in pdus: (rack1)"),
    ("power: {pdu: rack1, port: 2}", "", "terminals.T2.power.pdu", "no pdu 'rack1' in pdus: (none)"),
    ("power: {pdu: rack1, port: 9}", PDUS, "terminals.T2.power.port",
     "pdu rack1 has 8 ports, not 9"),
    ("power: {pdu: rack1, channel: 2}", PDUS, "terminals.T2.power",
     "a pdu outlet needs port (pdudaemon's port number)"),
    ("power: {pdu: rack1, port: 2, channel: 2}", PDUS, "terminals.T2.power",
     "a pdu outlet is given by port, not channel"),
    ("power: {pdu: rack1, port: 2, voltage: 12.0}", PDUS, "terminals.T2.power",
     "a pdu outlet only switches: no voltage / current_limit"),
    ("power: {psu: psu1, pdu: rack1, port: 2}", PDUS, "terminals.T2.power",
     "give exactly one of psu / relay / pdu, not psu and pdu"),
    ("power: {psu: psu1, voltage: 12.0, current_limit: 1.5}", PDUS, "terminals.T2.power",
     "a psu needs channel"),
    ("power: {psu: psu1, channel: 2, port: 2, voltage: 12.0, current_limit: 1.5}", PDUS,
     "terminals.T2.power", "port is for a pdu outlet; a psu takes channel"),
    ("power: {pdu: rack1, port: 0}", PDUS, "terminals.T2.power.port",
     "Input should be greater than or equal to 1"),
])
def test_bad_pdu_power_names_file_line_field(tmp_path, power, pdus, field, problem):
    text, p = _pdu_lab(tmp_path, power, pdus)
    with pytest.raises(ConfigError) as e:
        load_lab(p)
    line = _line_of(text, power)
    assert f"{p}:{line}: {field}: {problem}" in str(e.value)


@pytest.mark.parametrize("url,problem", [
    ("http://admin:secret@10.0.0.5:16421", "no credentials in the URL"),
    ("tcp://127.0.0.1:16421", "expected http://host:port of pdudaemon's HTTP listener"),
])
def test_bad_pdudaemon_url_names_file_line_field(tmp_path, url, problem):
    text, p = _pdu_lab(tmp_path, pdus=PDUS.replace("http://127.0.0.1:16421", url))
    with pytest.raises(ConfigError) as e:
        load_lab(p)
    assert f"{p}:{_line_of(text, 'url: ')}: pdus.rack1.url: {problem}" in str(e.value)
    assert "secret" not in str(e.value)  # the password is never echoed


def test_pdus_section_rejects_unknown_keys(tmp_path):
    text, p = _pdu_lab(tmp_path, pdus=PDUS + "    retries: 3\n")
    with pytest.raises(ConfigError) as e:
        load_lab(p)
    assert f"{p}:{_line_of(text, '    retries: 3')}: pdus.rack1.retries: unknown key" in str(e.value)
