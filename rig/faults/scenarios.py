"""The field's failure cases as data: set-up, fault, what the terminal must do, recovery.

A scenario file (``configs/scenarios/<name>.yaml``) names one case operators' guides describe
(no network, host error, MAC error, wrong operator, expired card...): the procedure that
exercises it, the faults (any of :mod:`rig.faults.spec`, as ``{fault: name, ...}``), and the
expectation — the checks a verdict is made of. Users add their own files; a bad file fails with
``file:line: field: problem``. The runner is :mod:`rig.control.scenario`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field

from ..config import load_model
from ..core.errors import ConfigError, TestError
from .spec import Fault, fault_from_dict

SCENARIOS_DIR = Path(__file__).resolve().parents[2] / "configs" / "scenarios"
Procedure = Literal["signon", "sale", "login", "not_signed_on"]


def _valid_fault(data: dict[str, Any]) -> dict[str, Any]:
    try:
        fault_from_dict(data)
    except TestError as e:
        raise ValueError(str(e)) from None
    return data


FaultData = Annotated[dict[str, Any], AfterValidator(_valid_fault)]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class SaleParams(_Strict):
    card: str = "cup_debit"
    entry: Literal["chip", "swipe", "tap"] = "chip"
    amount: str = "1.00"


class Expect(_Strict):
    """Checks of a verdict; only the ones given are checked."""

    outcome: str | None = Field(None, description="sale outcome: approved, declined, failed, "
                                "refused, read_failed")
    rc: str | None = Field(None, description="response code the terminal showed")
    signed_on: bool | None = Field(None, description="READY reached while the fault held")
    signon_sent: bool | None = Field(None, description="any 0800 reached the host while the "
                                     "fault held")
    attempts_min: int | None = Field(None, ge=1, description="sign-on attempts at least")
    reversal: bool | None = Field(None, description="a 0400 reached the host after the fault")
    signon_again: bool | None = Field(None, description="a fresh 0800 after the sale's result")
    login_refused: bool | None = None
    console: list[str] = Field(default_factory=list, description="regexes that must appear on "
                               "the console during the scenario")
    recovers: bool | None = Field(None, description="recovers once the fault is off")
    recover_within_s: float | None = Field(None, gt=0)


class Scenario(_Strict):
    name: str = Field(pattern=r"^[a-z0-9][a-z0-9-]*$")
    title: str
    why: str = Field("", description="what the field guides say about this case")
    procedure: Procedure
    faults: list[FaultData] = Field(default_factory=list)
    during: Literal["signon", "auth", "sale", "cycle"] | None = Field(
        None, description="window for faults that give none")
    sale: SaleParams = SaleParams()
    login: dict[str, str] | None = Field(None, description="operator id / password to try")
    manual_login: bool = Field(False, description="needs a terminal that waits for its "
                               "operator (auto_login: false)")
    needs: list[Literal["kernel", "virtual"]] = Field(default_factory=list)
    timeout_s: float = Field(60.0, gt=0)
    expect: Expect

    def fault_objects(self) -> list[Fault]:
        out = []
        for d in self.faults:
            f = fault_from_dict(d)
            if self.during is not None and f.during is None:
                f = f.model_copy(update={"during": self.during})
            out.append(f)
        return out

    def summary(self) -> dict[str, Any]:
        return {"name": self.name, "title": self.title, "procedure": self.procedure,
                "faults": self.faults, "during": self.during, "needs": self.needs,
                "expect": self.expect.model_dump(exclude_none=True, exclude_defaults=True)}


def load_scenario(path: str | Path) -> Scenario:
    sc = load_model(Scenario, path)
    if Path(path).stem != sc.name:
        raise ConfigError(f"{path}:1: name: {sc.name!r} does not match the file name "
                          f"{Path(path).stem!r}")
    return sc


def load_scenarios(directory: str | Path | None = None) -> dict[str, Scenario]:
    """Every ``*.yaml`` scenario of ``directory`` (default ``configs/scenarios``), by name."""
    d = Path(directory) if directory else SCENARIOS_DIR
    if not d.is_dir():
        raise ConfigError(f"{d}: no such scenario directory")
    return {sc.name: sc for sc in (load_scenario(p) for p in sorted(d.glob("*.yaml")))}
