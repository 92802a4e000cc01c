"""Lab configuration: pydantic models, loaded from YAML with ``file:line: field: problem`` errors.

The resolved config (secrets masked) is stored with every run, so a result always says what
produced it (after QCoDeS's station snapshot).
"""

from __future__ import annotations

import hashlib
import ipaddress
import json
import re
from pathlib import Path
from typing import Annotated, Any, Literal, TypeVar

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator
from ruamel.yaml import YAML
from ruamel.yaml.comments import CommentedMap, CommentedSeq
from ruamel.yaml.error import MarkedYAMLError, YAMLError
from ruamel.yaml.reader import ReaderError

from .core.errors import ConfigError

HexKey = Annotated[str, Field(pattern=r"^[0-9A-Fa-f]{32}$", description="16-byte key, hex")]


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Distribution(Strict):
    """A delay in milliseconds drawn per use: fixed, uniform or (truncated) normal."""

    dist: Literal["fixed", "uniform", "normal"] = "fixed"
    ms: float | None = Field(None, ge=0, description="fixed value")
    low: float | None = Field(None, ge=0)
    high: float | None = Field(None, ge=0)
    mean: float | None = Field(None, ge=0)
    sd: float | None = Field(None, ge=0)
    min: float = Field(0.0, ge=0)

    @model_validator(mode="after")
    def _complete(self) -> Distribution:
        need = {"fixed": ("ms",), "uniform": ("low", "high"), "normal": ("mean", "sd")}[self.dist]
        missing = [n for n in need if getattr(self, n) is None]
        if missing:
            raise ValueError(f"dist {self.dist!r} needs {', '.join(missing)}")
        return self

    def draw(self, rng: Any) -> float:
        """Milliseconds, using a ``random.Random``."""
        if self.dist == "fixed":
            v = float(self.ms or 0.0)
        elif self.dist == "uniform":
            v = rng.uniform(self.low, self.high)
        else:
            v = rng.gauss(self.mean, self.sd)
        return max(self.min, v)


class TerminalModel(Strict):
    """Electrical limits and console profile of one terminal model."""

    voltage_max: float = Field(gt=0, description="never set a PSU above this (V)")
    current_max: float = Field(gt=0, description="never set a current limit above this (A)")
    nominal_voltage: float = Field(gt=0)
    profile: str = Field("vlab", description="terminal profile: a name in configs/profiles/ or "
                         "a path to a .yaml file (console patterns, ECR protocol, keypad)")

    @model_validator(mode="after")
    def _nominal_in_limit(self) -> TerminalModel:
        if self.nominal_voltage > self.voltage_max:
            raise ValueError(f"nominal_voltage {self.nominal_voltage} > voltage_max {self.voltage_max}")
        return self


PsuDialectName = Literal["generic", "keysight_e36300", "rigol_dp800", "siglent_spd3303"]


class PsuConfig(Strict):
    kind: Literal["psu"] = "psu"
    resource: str = Field(description="VISA resource, e.g. TCPIP0::127.0.0.1::5025::SOCKET")
    dialect: PsuDialectName = "generic"
    channels: int = Field(3, ge=1, le=32, description="outputs (multi-channel racks and the virtual PSU go up to 32)")
    timeout_s: float = Field(2.0, gt=0)
    trace_hz: float = Field(20.0, ge=0, le=1000, description="current-trace samples per second "
                            "of each powered terminal's channel during a cycle (0: no trace)")
    trace_volts: bool = Field(True, description="measure the voltage with each current sample")


class RelayConfig(Strict):
    kind: Literal["relay"] = "relay"
    port: str = Field(description="pyserial URL or device path")
    baudrate: int = 9600
    channels: int = Field(8, ge=1, le=16)
    address: int = Field(1, ge=0, le=255)


class RobotConfig(Strict):
    """A GRBL 1.1 card robot on a serial line (``socket://`` for the virtual lab)."""

    kind: Literal["robot"] = "robot"
    port: str = Field(description="pyserial URL or device path")
    baudrate: int = 115200
    feed_mm_min: float = Field(6000, gt=0, description="travel feed rate (G1)")
    timeout_s: float = Field(5.0, gt=0, description="per-line reply timeout")
    home_on_open: bool = Field(False, description="$H at start (machines with limit switches)")


Instrument = Annotated[PsuConfig | RelayConfig | RobotConfig, Field(discriminator="kind")]


class Point(Strict):
    """Robot coordinates, mm (machine coordinates, MPos)."""

    x: float
    y: float
    z: float


class Stations(Strict):
    """Where a terminal's card interfaces are, in robot coordinates."""

    chip: Point = Field(description="card fully inserted in the chip slot (insert depth)")
    swipe_start: Point
    swipe_end: Point
    nfc: Point = Field(description="card resting on the contactless logo")
    keypad: Point | None = Field(None, description="keypad origin: the profile's key offsets "
                                 "(x, y) count from here; z is the top of the keys")


class Magazine(Strict):
    origin: Point = Field(description="slot 1's pick position")
    pitch_mm: float = Field(20.0, gt=0, description="slot spacing along +x")
    slots: dict[int, str] = Field(description="slot number -> card profile name")


class RobotLayout(Strict):
    """The shared card robot: which instrument, where it parks, what the magazine holds."""

    instrument: str
    park: Point
    safe_z: float = Field(description="travel height above every station")
    magazine: Magazine
    swipe_speed_mm_s: float = Field(400, gt=0, description="default swipe speed")
    tap_dwell_ms: float = Field(500, ge=0, description="default dwell in the NFC field")
    cards_dir: str = Field("configs/cards", description="card profiles (relative to the cwd)")

    def slot_point(self, slot: int) -> Point:
        o = self.magazine.origin
        return Point(x=o.x + (slot - 1) * self.magazine.pitch_mm, y=o.y, z=o.z)

    def slot_of(self, card: str) -> int | None:
        return next((s for s, c in self.magazine.slots.items() if c == card), None)


class PduConfig(Strict):
    """A PDU switched through a pdudaemon server's HTTP listener (pdudaemon 1.1:
    ``GET <url>/power/control/on?hostname=<hostname>&port=<n>``)."""

    url: str = Field(description="pdudaemon's HTTP listener, e.g. http://127.0.0.1:16421")
    hostname: str = Field(pattern=r"^[^\s&#?/=]+$",
                          description="the PDU's name in pdudaemon's config (its pdus: key)")
    ports: int | None = Field(None, ge=1, le=999, description="outlets (checks each terminal's "
                              "port when given)")
    timeout_s: float = Field(30.0, gt=0, description="per request: pdudaemon answers once the "
                             "PDU switched, after its own retries")

    @field_validator("url")
    @classmethod
    def _http_url(cls, v: str) -> str:
        m = re.fullmatch(r"(https?)://([^/?#\s]+?)(/[^?#\s]*)?", v)
        if not m:
            raise ValueError(f"expected http://host:port of pdudaemon's HTTP listener, got {v!r}")
        if "@" in m.group(2):
            raise ValueError("no credentials in the URL (pdudaemon has no authentication; "
                             "keep its listener on loopback or a lab-only network)")
        return v.rstrip("/")


class PowerConfig(Strict):
    """How a terminal is powered: a PSU channel (voltage, current limit), a relay channel, or
    a PDU outlet switched through pdudaemon (``pdu`` names an entry of the lab's ``pdus``)."""

    psu: str | None = None
    relay: str | None = None
    pdu: str | None = Field(None, description="a PDU of the lab's pdus: section (pdudaemon)")
    channel: int | None = Field(None, ge=1, description="PSU output / relay number")
    port: int | None = Field(None, ge=1, description="PDU outlet (pdudaemon's port number)")
    voltage: float | None = Field(None, gt=0)
    current_limit: float | None = Field(None, gt=0)
    off_s: float = Field(0.5, ge=0, description="off time in a power cycle")

    @model_validator(mode="after")
    def _one_backend(self) -> PowerConfig:
        given = [n for n in ("psu", "relay", "pdu") if getattr(self, n) is not None]
        if len(given) != 1:
            raise ValueError("give exactly one of psu / relay / pdu"
                             + (f", not {' and '.join(given)}" if given else ""))
        if self.pdu is not None:
            if self.port is None:
                raise ValueError("a pdu outlet needs port (pdudaemon's port number)")
            if self.channel is not None:
                raise ValueError("a pdu outlet is given by port, not channel")
            if self.voltage is not None or self.current_limit is not None:
                raise ValueError("a pdu outlet only switches: no voltage / current_limit")
            return self
        if self.channel is None:
            raise ValueError(f"a {given[0]} needs channel")
        if self.port is not None:
            raise ValueError(f"port is for a pdu outlet; a {given[0]} takes channel")
        if self.psu is not None and (self.voltage is None or self.current_limit is None):
            raise ValueError("a psu channel needs voltage and current_limit")
        return self

    @property
    def outlet(self) -> int:
        """The channel (PSU, relay) or port (PDU) that powers the terminal."""
        n = self.port if self.pdu is not None else self.channel
        assert n is not None
        return n


class Operator(Strict):
    id: str = Field("01", pattern=r"^[0-9A-Za-z]{1,8}$")
    password: str = Field("0000", min_length=1, max_length=16)


class TerminalConfig(Strict):
    model: str
    terminal_id: str = Field(pattern=r"^[0-9A-Za-z]{8}$", description="field 41")
    merchant_id: str = Field(pattern=r"^[0-9A-Za-z]{15}$", description="field 42")
    tmk: HexKey
    key_mode: Literal["001", "003", "004"] = "003"
    power: PowerConfig
    console: str | None = Field(None, description="pyserial URL of the console log port")
    ecr: str | None = Field(None, description="pyserial URL of the ECR port")
    host_path: str = Field(description="host:port the terminal dials: the host itself, or an "
                           "address of its own where the rig runs the terminal's fault proxy")
    operator: Operator = Operator()
    auto_login: bool = True
    stations: Stations | None = Field(None, description="card interfaces for the robot")
    net_iface: str | None = Field(None, description="the rig's network interface this terminal "
                                  "is on (kernel link / rate faults)")
    net_addr: str | None = Field(None, description="the terminal's IP address (kernel faults "
                                 "match it)")

    _check_host_path = field_validator("host_path")(lambda cls, v: _hostport(v))


def _hostport(v: str) -> str:
    if not re.fullmatch(r"[^:\s]+:\d{1,5}", v) or not 0 < int(v.rsplit(":", 1)[1]) < 65536:
        raise ValueError(f"expected host:port, got {v!r}")
    return v


class HostRule(Strict):
    processing_ms: float = Field(0.0, ge=0)


class HostOverride(Strict):
    """Force a response code for financial requests matching every criterion given."""

    terminal: str | None = Field(None, description="terminal name (lab config key)")
    card: str | None = Field(None, description="card profile name")
    amount_minor: int | None = Field(None, ge=0, description="exact amount (field 4)")
    rc: str = Field(pattern=r"^[0-9A-Z]{2}$", description="response code to answer with")


class HostConfig(Strict):
    dialect: Literal["cup", "iso87"] = "cup"
    listen: str = "127.0.0.1:5800"
    processing_ms: float = Field(0.0, ge=0, description="delay before each response")
    rules: dict[str, HostRule] = Field(default_factory=dict, description="per terminal name")
    read_timeout_s: float = Field(30.0, gt=0, description="a connection idle this long is closed")
    frame_timeout_s: float = Field(10.0, gt=0, description="a frame must be complete this long "
                                   "after its first byte (capped by read_timeout_s)")
    max_connections: int = Field(512, ge=1, le=60000, description="open connections; at the cap "
                                 "a new one evicts the oldest idle connection (keep it under "
                                 "the process's open-file limit)")
    overrides: list[HostOverride] = Field(
        default_factory=list, description="forced response codes; the first match wins")
    cards_dir: str = Field("configs/cards", description="card profiles the host knows "
                           "(relative to the cwd, else to the project)")

    _check_listen = field_validator("listen")(lambda cls, v: _hostport(v))


class SimNetns(Strict):
    """Virtual terminals behind veth pairs in a network namespace the lab makes (needs root).

    Terminal n (1-based, in config order) dials from ``t<n>`` (the subnet's ``.n.2``) inside
    the namespace ``name``; the rig's end ``<iface_prefix><n>`` (``.n.1``) stays in the lab's
    namespace, where the terminal's fault proxy listens. Kernel faults (link, rate, loss) on
    ``net_iface`` / ``net_addr`` then act on the terminal's real traffic.
    """

    name: str = Field("riglab", pattern=r"^[A-Za-z0-9_.-]{1,32}$",
                      description="the network namespace (ip netns) the lab creates and deletes")
    iface_prefix: str = Field("rlab", pattern=r"^[A-Za-z0-9_]{1,10}$",
                              description="rig-side veth of terminal n: <iface_prefix><n>")
    subnet: str = Field("10.78.0.0/16", description="IPv4, /24 or larger: terminal n gets "
                        "<.n.1>/30 (rig side) and <.n.2>/30 (terminal side)")

    @field_validator("name")
    @classmethod
    def _not_dots(cls, v: str) -> str:
        if v in (".", ".."):
            raise ValueError(f"{v!r} is not a usable namespace name")
        return v

    @field_validator("subnet")
    @classmethod
    def _ipv4_subnet(cls, v: str) -> str:
        try:
            net = ipaddress.ip_network(v, strict=True)
        except ValueError as e:
            raise ValueError(f"subnet {v!r}: {e}") from None
        if net.version != 4 or net.prefixlen > 23:
            raise ValueError(f"subnet {v!r} must be IPv4 and /23 or larger (a /24 per terminal)")
        return v

    def capacity(self) -> int:
        """How many terminals fit: one /24 each, the subnet's first /24 unused."""
        return min(ipaddress.ip_network(self.subnet).num_addresses // 256 - 1, 999)

    def addresses(self, n: int) -> tuple[str, str]:
        """(rig side, terminal side) IPv4 addresses of terminal ``n`` (1-based)."""
        if not 1 <= n <= self.capacity():
            raise ValueError(f"terminal number {n} does not fit in subnet {self.subnet}")
        base = ipaddress.ip_network(self.subnet).network_address + n * 256
        return str(base + 1), str(base + 2)

    def iface(self, n: int) -> str:
        """The rig-side veth of terminal ``n``."""
        return f"{self.iface_prefix}{n}"


class SimConfig(Strict):
    """Settings of the virtual lab (ignored on a real bench)."""

    time_scale: float = Field(1.0, gt=0, le=100, description="multiplies every simulated delay")
    seed: int = 1
    psu_listen: str = "127.0.0.1:5025"
    psu_model: PsuDialectName = "generic"
    psu_channels: int = Field(4, ge=1, le=32)
    boot: Distribution = Distribution(dist="normal", mean=800, sd=60, min=300)
    login: Distribution = Distribution(dist="fixed", ms=50)
    clock_sync: Distribution = Distribution(dist="fixed", ms=20)
    ready: Distribution = Distribution(dist="fixed", ms=10)
    signon_timeout_ms: float = Field(5000, gt=0)
    signon_retries: int = Field(3, ge=0)
    backoff_ms: list[float] = Field(default_factory=lambda: [500.0, 1000.0, 2000.0])
    truth_journal: str | None = Field(None, description="JSONL path; default results/<lab>-truth.jsonl")
    min_voltage: float = Field(9.0, gt=0, description="below this a virtual terminal browns out")
    idle_current_a: float = 0.35
    boot_current_a: float = 0.9
    txn_current_a: float = 0.6
    grbl_listen: str = "127.0.0.1:5030"
    robot_max_feed_mm_min: float = Field(60000, gt=0, description="$110-$112 in the sim")
    swipe_speed_min_mm_s: float = Field(100, gt=0, description="slower reads fail (10 cm/s)")
    swipe_speed_max_mm_s: float = Field(1500, gt=0, description="faster reads fail (150 cm/s)")
    insert_tolerance_mm: float = Field(1.0, gt=0, description="how close to a station counts")
    tap_dwell_min_ms: float = Field(200, ge=0, description="NFC read needs this long in field")
    card_read: Distribution = Distribution(dist="fixed", ms=120)
    auth_timeout_ms: float = Field(8000, gt=0, description="0210 wait before reversal")
    reversal_retries: int = Field(3, ge=0)
    result_display: Distribution = Distribution(dist="fixed", ms=5)
    chip_fallback_after: int = Field(3, ge=1, description="failed chip reads of one transaction "
                                     "before the terminal offers fallback to swipe")
    swipe_chip_cards: bool = Field(True, description="accept a chip card's swipe (service code "
                                   "2xx/6xx) outside fallback as a plain swipe; False: 'use chip'")
    shallow_insert_max_mm: float = Field(15, gt=0, description="a card at a chip station's x/y up "
                                         "to this far short of its depth is a shallow insert")
    shallow_insert_dwell_ms: float = Field(100, ge=0, description="a shallow card must stay this "
                                           "long (real time) before the terminal notices it")
    control_listen: str | None = Field("127.0.0.1:5099", description="JSON-lines control port of "
                                       "the lab (card faults, quirks); null: no control port")
    netns: SimNetns | None = Field(None, description="terminals behind veth pairs in a network "
                                   "namespace (kernel faults on their traffic); true: defaults")

    _check_listen = field_validator("psu_listen", "grbl_listen")(lambda cls, v: _hostport(v))
    _check_control = field_validator("control_listen")(lambda cls, v: v if v is None else _hostport(v))

    @field_validator("netns", mode="before")
    @classmethod
    def _netns_shorthand(cls, v: Any) -> Any:
        if v is True:
            return {}
        return None if v is False else v


class LabConfig(Strict):
    name: str = Field(pattern=r"^[A-Za-z0-9_.-]+$")
    virtual: bool = Field(False, description="start the virtual lab (rig.sim) when nothing listens")
    models: dict[str, TerminalModel]
    instruments: dict[str, Instrument] = Field(default_factory=dict)
    pdus: dict[str, PduConfig] = Field(default_factory=dict,
                                       description="PDUs switched through pdudaemon servers")
    host: HostConfig = HostConfig()
    terminals: dict[str, TerminalConfig]
    safe_power: Literal["off", "on", "leave"] = Field("off", description="power state on exit")
    robot: RobotLayout | None = None
    sim: SimConfig = SimConfig()

    @model_validator(mode="after")
    def _references(self) -> LabConfig:
        for name, t in self.terminals.items():
            if t.model not in self.models:
                raise _field_error(("terminals", name, "model"), f"unknown model {t.model!r}")
            m = self.models[t.model]
            p = t.power
            if p.pdu is not None:  # an outlet of a PDU behind pdudaemon, no instrument
                pdu = self.pdus.get(p.pdu)
                if pdu is None:
                    raise _field_error(("terminals", name, "power", "pdu"),
                                       f"no pdu {p.pdu!r} in pdus: ({', '.join(self.pdus) or 'none'})")
                if pdu.ports is not None and p.outlet > pdu.ports:
                    raise _field_error(("terminals", name, "power", "port"),
                                       f"pdu {p.pdu} has {pdu.ports} ports, not {p.outlet}")
                continue
            backend = p.psu or p.relay
            inst = self.instruments.get(backend or "")
            want = "psu" if p.psu else "relay"
            if inst is None or inst.kind != want:
                raise _field_error(("terminals", name, "power", want), f"no {want} instrument {backend!r}")
            if p.outlet > inst.channels:
                raise _field_error(("terminals", name, "power", "channel"),
                                   f"{backend} has {inst.channels} channels, not {p.outlet}")
            if p.voltage is not None and p.voltage > m.voltage_max:
                raise _field_error(("terminals", name, "power", "voltage"),
                                   f"{p.voltage} V is above model {t.model!r} voltage_max {m.voltage_max} V")
            if p.current_limit is not None and p.current_limit > m.current_max:
                raise _field_error(("terminals", name, "power", "current_limit"),
                                   f"{p.current_limit} A is above model {t.model!r} current_max {m.current_max} A")
        if self.robot is not None:
            inst = self.instruments.get(self.robot.instrument)
            if inst is None or inst.kind != "robot":
                raise _field_error(("robot", "instrument"),
                                   f"no robot instrument {self.robot.instrument!r}")
        return self

    @model_validator(mode="after")
    def _sim_netns(self) -> LabConfig:
        """With ``sim.netns`` on a virtual lab, terminal n (1-based, config order) gets what it
        does not set: ``net_iface`` <prefix><n>, ``net_addr`` .n.2 of the subnet; its
        ``host_path`` host becomes .n.1 (port kept), where the rig runs its fault proxy."""
        ns = self.sim.netns
        if not self.virtual or ns is None:
            return self
        if len(self.terminals) > ns.capacity():
            raise _field_error(("sim", "netns", "subnet"),
                               f"{ns.subnet} has room for {ns.capacity()} terminals, not "
                               f"{len(self.terminals)}")
        for n, (name, t) in enumerate(list(self.terminals.items()), start=1):
            rig_ip, term_ip = ns.addresses(n)
            port = t.host_path.rsplit(":", 1)[1]
            self.terminals[name] = t.model_copy(update={
                "net_iface": t.net_iface or ns.iface(n), "net_addr": t.net_addr or term_ip,
                "host_path": f"{rig_ip}:{port}"})
        return self

    # --- convenience -------------------------------------------------------------------------
    def model_of(self, terminal: str) -> TerminalModel:
        return self.models[self.terminals[terminal].model]

    def digest(self) -> str:
        """A SHA-256 of the whole resolved config, secrets included: two configs with the same
        digest are the same config, and the digest reveals no key."""
        text = json.dumps(self.model_dump(mode="json"), sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(text.encode()).hexdigest()

    def snapshot(self) -> dict[str, Any]:
        """The resolved config as plain data with secrets (TMKs, passwords) masked."""
        data = self.model_dump(mode="json")
        for t in data["terminals"].values():
            t["tmk"] = "****"
            t["operator"]["password"] = "****"
        return data


class _LocatedError(ValueError):
    def __init__(self, loc: tuple[str, ...], msg: str) -> None:
        super().__init__(msg)
        self.loc = loc


def _field_error(loc: tuple[str, ...], msg: str) -> _LocatedError:
    return _LocatedError(loc, msg)


field_error = _field_error  # for other config-like models (terminal profiles): same file:line errors


# --- YAML loading with line numbers ---------------------------------------------------------

def _line_of(node: Any, loc: tuple[Any, ...]) -> int | None:
    """1-based line of the deepest node of ``loc`` that exists in the ruamel tree."""
    line = None
    for key in loc:
        if isinstance(node, CommentedMap):
            if key in node:
                try:
                    line = node.lc.key(key)[0] + 1
                except (KeyError, TypeError):  # a key merged in from a YAML anchor (<<: *x)
                    line = node.lc.line + 1
                node = node[key]
                continue
            if getattr(node.lc, "line", None) is not None:
                line = node.lc.line + 1
            break
        if isinstance(node, CommentedSeq) and isinstance(key, int) and key < len(node):
            line = node.lc.item(key)[0] + 1
            node = node[key]
            continue
        break
    return line


def _plain(node: Any) -> Any:
    if isinstance(node, dict):
        return {str(k) if not isinstance(k, str) else k: _plain(v) for k, v in node.items()}
    if isinstance(node, list):
        return [_plain(v) for v in node]
    return node


def read_yaml(path: str | Path) -> tuple[dict[str, Any], Any]:
    """A YAML file's mapping as plain data, and its ruamel tree (for line numbers)."""
    path = Path(path)
    try:
        raw = path.read_bytes()
    except OSError as e:
        raise ConfigError(f"{path}: cannot read: {e.strerror or e}") from e
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        line = raw[:e.start].count(b"\n") + 1
        raise ConfigError(f"{path}:{line}: not UTF-8 text (byte {raw[e.start]:#04x} at offset "
                          f"{e.start})") from None
    yaml = YAML(typ="rt")
    try:
        tree = yaml.load(text)
    except MarkedYAMLError as e:
        mark = e.problem_mark
        line = mark.line + 1 if mark else "?"
        raise ConfigError(f"{path}:{line}: YAML syntax: {e.problem}") from e
    except ReaderError as e:  # a control character: not a MarkedYAMLError, but has a position
        line = text[:max(0, e.position)].count("\n") + 1
        c = e.character if isinstance(e.character, int) else ord(str(e.character)[:1] or "?")
        raise ConfigError(f"{path}:{line}: YAML syntax: {e.reason} (U+{c:04X})") from None
    except (YAMLError, ValueError, TypeError, AttributeError, NotImplementedError) as e:
        # ruamel's round-trip loader raises these on input it cannot represent: '._' resolved
        # as a float, an unhashable complex key, duplicate keys with overlapping comments, a
        # merge key aliasing its own mapping (AttributeError)
        raise ConfigError(f"{path}: YAML the loader cannot read ({type(e).__name__}: {e}); "
                          f"look for odd keys, control characters or duplicate keys") from None
    if not isinstance(tree, dict):
        raise ConfigError(f"{path}:1: expected a mapping at the top level")
    return _plain(tree), tree


def load_lab(path: str | Path, overrides: dict[str, Any] | None = None) -> LabConfig:
    """Load and validate a lab YAML file; errors name ``file:line: field: problem``."""
    data, tree = read_yaml(path)
    if overrides:
        data = _merge(data, overrides)
    return validate_lab(data, path=str(path), tree=tree)


def _merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for k, v in over.items():
        out[k] = _merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


M = TypeVar("M", bound=BaseModel)


def validate_model(model: type[M], data: dict[str, Any], path: str = "<config>",
                   tree: Any = None) -> M:
    """Validate ``data`` as ``model``; errors name ``file:line: field: problem``."""
    try:
        return model.model_validate(data)
    except ValidationError as e:
        problems = []
        for err in e.errors():
            loc = tuple(err["loc"])
            if len(loc) > 2 and loc[0] == "instruments" and loc[2] in ("psu", "relay", "robot"):
                loc = loc[:2] + loc[3:]  # drop the discriminator tag pydantic inserts
            msg = err["msg"]
            ctx = err.get("ctx") or {}
            inner = ctx.get("error")
            if isinstance(inner, _LocatedError):
                loc, msg = loc + inner.loc, str(inner)
            elif msg.startswith("Value error, "):
                msg = msg[len("Value error, "):]
            line = _line_of(tree, loc) if tree is not None else None
            field = ".".join(str(x) for x in loc) or "(top)"
            if err["type"] == "extra_forbidden":
                msg = "unknown key"
            problems.append(f"{path}:{line or '?'}: {field}: {msg}")
        raise ConfigError("\n".join(problems)) from None


def validate_lab(data: dict[str, Any], path: str = "<config>", tree: Any = None) -> LabConfig:
    return validate_model(LabConfig, data, path, tree)


def load_model(model: type[M], path: str | Path) -> M:
    """Load a YAML file as ``model`` (scenarios, campaigns...) with file:line errors."""
    data, tree = read_yaml(path)
    return validate_model(model, data, str(path), tree)
