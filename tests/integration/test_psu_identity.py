"""Instrument identity over real sockets: the virtual PSU answers ``*IDN?`` as the family it
emulates, and the driver refuses an instrument of another family before any output changes."""

from __future__ import annotations

import socket
from collections.abc import Iterator

import pytest

from rig import open_local
from rig.config import PsuConfig
from rig.core.errors import InstrumentError
from rig.drivers.psu import PsuDriver
from rig.drivers.psu_dialects import DIALECTS
from rig.sim.lab import VirtualLab
from rig.sim.psu import MODELS, ScpiPsuServer
from rig.timeline.events import EventKind, ListSink
from tests.integration.test_psu_sim import LoopThread
from tests.labcfg import virtual_config

pytestmark = pytest.mark.integration

RIGOL_IDN = MODELS["rigol_dp800"].idn


@pytest.fixture(scope="module")
def loop() -> Iterator[LoopThread]:
    lt = LoopThread()
    yield lt
    lt.close()


def _serve(loop: LoopThread, model: str, idn: str | None = None) -> ScpiPsuServer:
    srv = ScpiPsuServer(channels=3, model=model, idn=idn)
    loop.run(srv.start("127.0.0.1", 0))
    return srv


def _cfg(srv: ScpiPsuServer, dialect: str) -> PsuConfig:
    return PsuConfig(resource=f"TCPIP0::127.0.0.1::{srv.port}::SOCKET", dialect=dialect,
                     channels=3, timeout_s=2.0)


@pytest.mark.parametrize("model", list(MODELS))
def test_the_virtual_psu_answers_an_identity_fitting_its_dialect(loop, model):
    srv = _serve(loop, model)
    try:
        with PsuDriver("psu1", _cfg(srv, model), ListSink()) as d:
            assert d.identity == MODELS[model].idn
            assert DIALECTS[model].fits(d.identity)
    finally:
        loop.run(srv.stop())


def test_a_rigol_answering_where_a_keysight_is_configured_changes_nothing(loop):
    # a keysight-syntax virtual PSU that answers *IDN? as a Rigol DP832: the wrong instrument
    srv = _serve(loop, "keysight_e36300", idn=RIGOL_IDN)
    try:
        srv.process("VOLT 5,(@1);OUTP ON,(@1)")  # its state before the rig connects
        sink = ListSink()
        cfg = _cfg(srv, "keysight_e36300")
        with pytest.raises(InstrumentError) as err:
            PsuDriver("psu1", cfg, sink, {1: (12.6, 2.0)}).open()
        msg = str(err.value)
        assert f"psu1 ({cfg.resource})" in msg
        assert repr(RIGOL_IDN) in msg and "'keysight_e36300'" in msg
        assert [e.data["cmd"] for e in sink.events if e.kind is EventKind.PSU_IO] == ["*IDN?"]
        assert srv.effective(1) == (True, 5.0)  # output and voltage untouched
    finally:
        loop.run(srv.stop())


def test_a_lab_whose_psu_is_another_family_does_not_open(tmp_path):
    """The whole bench: the virtual PSU emulates a Rigol, the lab config says Keysight."""
    cfg = virtual_config(tmp_path, psu_model="rigol_dp800")
    cfg = cfg.model_copy(update={"instruments": {**cfg.instruments, "psu1": cfg.instruments[
        "psu1"].model_copy(update={"dialect": "keysight_e36300"})}})
    with VirtualLab(cfg) as lab:
        with pytest.raises(InstrumentError, match=r"psu1 \(TCPIP0::127\.0\.0\.1::\d+::SOCKET\): "
                           r"'\*IDN\?' answered 'RIGOL TECHNOLOGIES,DP832.*dialect "
                           r"'keysight_e36300'"):
            open_local(cfg, results=tmp_path / "results", start_lab=False)
        assert all(lab.psu.effective(ch) == (False, 0.0) for ch in range(1, 5))
        host, port = cfg.sim.psu_listen.split(":")
        with socket.create_connection((host, int(port)), timeout=2):
            pass  # the lab still serves
