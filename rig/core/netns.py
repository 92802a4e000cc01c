"""Named network namespaces (``ip netns``), veth pairs, and sockets made inside a namespace.

Shared core: the kernel faults, the tests and the virtual lab use it. Plumbing goes through
the ``ip`` command (iproute2, a system dependency already) so that this module needs no
third-party package; entering a namespace is ``setns(2)``, which on Linux is per thread: a
short-lived thread enters the namespace, does the work and ends, so the caller's threads stay
where they are. A socket keeps the namespace it was created in for its whole life.
"""

from __future__ import annotations

import ctypes
import os
import re
import shutil
import socket
import subprocess
import threading
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

from rig.core.errors import InfrastructureError, TestError

RUN_DIR = Path("/run/netns")  # where ``ip netns add`` binds namespaces
CLONE_NEWNET = 0x40000000
_NAME = re.compile(r"[A-Za-z0-9_.-]{1,64}")
T = TypeVar("T")


def check_name(name: str) -> str:
    """Return ``name`` if it is a usable namespace name, else raise TestError."""
    if not isinstance(name, str) or not _NAME.fullmatch(name) or name in (".", ".."):
        raise TestError(f"invalid network namespace name {name!r} (letters, digits, _ . -)")
    return name


def path(name: str) -> Path:
    return RUN_DIR / check_name(name)


def exists(name: str) -> bool:
    return path(name).exists()


def names(prefix: str = "") -> list[str]:
    """Named namespaces whose name starts with ``prefix``, sorted."""
    try:
        return sorted(p.name for p in RUN_DIR.iterdir() if p.name.startswith(prefix))
    except FileNotFoundError:
        return []


def _ip(*args: str, netns: str | None = None) -> str:
    argv = ["ip", *(["-n", check_name(netns)] if netns else []), *args]
    if shutil.which("ip") is None:
        raise InfrastructureError("the 'ip' command (iproute2) is missing: apt-get install iproute2")
    r = subprocess.run(argv, capture_output=True, text=True, timeout=10)
    if r.returncode != 0:
        raise InfrastructureError(f"{' '.join(argv)} failed: {r.stderr.strip() or r.returncode}")
    return r.stdout


def create(name: str) -> None:
    """Create the named namespace (``ip netns add``) with its loopback up."""
    _ip("netns", "add", check_name(name))
    try:
        _ip("link", "set", "lo", "up", netns=name)
    except BaseException:
        delete(name)
        raise


def delete(name: str) -> None:
    """Delete the named namespace; idempotent. Links inside it go with it (veth peers too)."""
    if exists(name):
        _ip("netns", "del", name)


def sweep(prefix: str) -> list[str]:
    """Delete every namespace whose name starts with ``prefix`` (non-empty); say which."""
    if not prefix:
        raise TestError("sweep needs a non-empty prefix")
    done = []
    for n in names(prefix):
        delete(n)
        done.append(f"netns {n}: deleted")
    return done


def add_veth(name: str, peer: str, *, netns: str | None = None, peer_netns: str | None = None,
             addr: str | None = None, peer_addr: str | None = None) -> None:
    """A veth pair ``name`` (in ``netns``) <-> ``peer`` (in ``peer_netns``), both up.

    ``None`` means the current namespace. ``addr`` / ``peer_addr`` are ``"10.0.0.1/24"``.
    """
    _ip("link", "add", "name", name, "type", "veth", "peer", "name", peer,
        *(["netns", check_name(peer_netns)] if peer_netns else []), netns=netns)
    try:
        for ifname, ns, a in ((name, netns, addr), (peer, peer_netns, peer_addr)):
            if a:
                _ip("addr", "add", a, "dev", ifname, netns=ns)
            _ip("link", "set", ifname, "up", netns=ns)
    except BaseException:
        try:
            _ip("link", "del", name, netns=netns)
        except InfrastructureError:
            pass
        raise


def _setns(fd: int) -> None:
    if hasattr(os, "setns"):  # Python >= 3.12
        os.setns(fd, CLONE_NEWNET)
        return
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.setns(fd, CLONE_NEWNET) != 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))


def run_in(netns: str | None, fn: Callable[..., T], *args, **kwargs) -> T:
    """Call ``fn(*args, **kwargs)`` inside ``netns`` (None: here) and return its result.

    The call runs in a fresh thread that enters the namespace and then ends; exceptions are
    re-raised in the caller. Anything created there that holds a namespace (a socket, a
    netlink socket) stays in it after the thread is gone.
    """
    if netns is None:
        return fn(*args, **kwargs)
    if not exists(netns):
        raise InfrastructureError(f"network namespace {netns!r} does not exist (ip netns list)")
    box: dict[str, object] = {}

    def body() -> None:
        try:
            fd = os.open(path(netns), os.O_RDONLY | os.O_CLOEXEC)
            try:
                _setns(fd)
            finally:
                os.close(fd)
            box["result"] = fn(*args, **kwargs)
        except BaseException as e:  # re-raised in the caller
            box["error"] = e

    t = threading.Thread(target=body, name=f"netns-{netns}", daemon=True)
    t.start()
    t.join()
    if "error" in box:
        err = box["error"]
        assert isinstance(err, BaseException)
        if isinstance(err, PermissionError):
            raise InfrastructureError(
                f"cannot enter network namespace {netns!r}: needs root or CAP_SYS_ADMIN") from err
        raise err
    return box["result"]  # type: ignore[return-value]


def socket_in(netns: str | None, family: int = socket.AF_INET, type: int = socket.SOCK_STREAM,
              proto: int = 0) -> socket.socket:
    """A new socket that lives in ``netns`` (None: the current namespace)."""
    return run_in(netns, socket.socket, family, type, proto)


def command(netns: str | None, argv: list[str]) -> list[str]:
    """``argv`` prefixed so that it runs inside ``netns`` (``nsenter``, else ``ip netns exec``).

    ``nsenter --net`` (util-linux) only switches the network namespace and is ~8 ms faster per
    call than ``ip netns exec``, which also makes a mount namespace to remount /sys.
    """
    if netns is None:
        return list(argv)
    if shutil.which("nsenter"):
        return ["nsenter", f"--net={path(netns)}", "--", *argv]
    return ["ip", "netns", "exec", check_name(netns), *argv]
