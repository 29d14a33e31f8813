"""Network namespaces for tests with libwebrtc and the real livekit-server.

libwebrtc (the official SDKs) and livekit-server ignore loopback interfaces, so they offer
no ICE candidate on 127.0.0.1. ``netns()`` makes a private network namespace holding a veth
pair with both ends inside it: processes run there (``ns.popen``) reach each other over the
two veth addresses, which libwebrtc treats as ordinary interfaces, and no packet leaves the
namespace. ``netns(exposed=True)`` leaves the client end of the pair in the test process's
own namespace instead, so the test process itself reaches servers inside over the veth
pair (and nothing else: the namespace has no route beyond its own /24).

Needs root and ``ip`` (Debian package ``iproute2``); ``netns_unavailable()`` says why not.
``python -m tests.netns`` checks that TCP works between the two addresses.
"""

from __future__ import annotations

import contextlib
import functools
import os
import random
import secrets
import shutil
import subprocess
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

SERVER_IF = "veth-srv"
CLIENT_IF = "veth-cli"


@dataclass
class NetNs:
    """A live namespace; processes started with ``popen`` are ended when it is deleted.

    ``exposed``: ``client_ip`` is on an interface of the test process's namespace (see
    `netns`), not inside this one."""

    name: str
    server_ip: str
    client_ip: str
    server_if: str = SERVER_IF
    client_if: str = CLIENT_IF
    exposed: bool = False
    procs: list[subprocess.Popen[Any]] = field(default_factory=list)

    def argv(self, argv: Sequence[str]) -> list[str]:
        """``argv`` prefixed so that it runs inside the namespace."""
        return ["ip", "netns", "exec", self.name, *argv]

    def popen(self, argv: Sequence[str], **kw: Any) -> subprocess.Popen[Any]:
        """Start ``argv`` inside the namespace (``ip netns exec`` execs it: same PID)."""
        proc: subprocess.Popen[Any] = subprocess.Popen(self.argv(argv), **kw)
        self.procs.append(proc)
        return proc

    @property
    def signal_ip(self) -> str:
        """A second client-side address (exposed namespaces only), for connections that
        `partition` must not cut: 10.231.N.3."""
        return self.client_ip.rsplit(".", 1)[0] + ".3"

    @contextlib.contextmanager
    def partition(self) -> Iterator[None]:
        """Drop every packet between the namespace and ``client_ip`` (both directions,
        UDP and TCP) for the duration of the block; ``signal_ip`` is not affected.

        Policy routing inside the namespace (no iptables or tc filters needed): the
        ``local`` rule moves behind two rules that send traffic from and to ``client_ip``
        to a table holding only a blackhole route."""
        ip = ["-n", self.name]
        _ip(*ip, "rule", "add", "pref", "10", "lookup", "local")
        _ip(*ip, "rule", "del", "pref", "0")
        _ip(*ip, "route", "add", "blackhole", "default", "table", "100")
        _ip(*ip, "rule", "add", "pref", "5", "from", self.client_ip, "lookup", "100")
        _ip(*ip, "rule", "add", "pref", "6", "to", self.client_ip, "lookup", "100")
        try:
            yield
        finally:
            for args in (("rule", "del", "pref", "5"), ("rule", "del", "pref", "6"),
                         ("route", "del", "blackhole", "default", "table", "100"),
                         ("rule", "add", "pref", "0", "lookup", "local"),
                         ("rule", "del", "pref", "10")):
                with contextlib.suppress(RuntimeError):
                    _ip(*ip, *args)

    def run(self, argv: Sequence[str], timeout: float = 30.0) -> subprocess.CompletedProcess[str]:
        """Run ``argv`` inside the namespace to completion; raises if it fails."""
        return subprocess.run(self.argv(argv), capture_output=True, text=True, check=True,
                              timeout=timeout)


def _ip(*args: str) -> None:
    res = subprocess.run(["ip", *args], capture_output=True, text=True, timeout=10)
    if res.returncode != 0:
        raise RuntimeError(f"ip {' '.join(args)} failed: {res.stderr.strip() or res.returncode}")


def stop_process(proc: subprocess.Popen[Any], grace: float = 3.0) -> None:
    """Terminate ``proc`` (one we started), then kill it if it lingers."""
    if proc.poll() is not None:
        return
    proc.terminate()
    try:
        proc.wait(grace)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(grace)


def _free_subnet() -> int:
    """A third octet for 10.231.N.0/24 that no interface of ours uses yet."""
    used = subprocess.run(["ip", "-4", "-o", "addr"], capture_output=True, text=True,
                          timeout=10).stdout
    for _ in range(100):
        subnet = random.randint(1, 254)
        if f"10.231.{subnet}." not in used:
            return subnet
    raise RuntimeError("no free 10.231.N.0/24 subnet")


@contextlib.contextmanager
def netns(*, exposed: bool = False) -> Iterator[NetNs]:
    """A fresh namespace with ``lo`` up and a veth pair 10.231.N.1/24 <-> 10.231.N.2/24.

    Both ends are inside it, unless ``exposed``: then the client end (10.231.N.2, under a
    unique interface name) stays in the caller's namespace, so the caller reaches
    10.231.N.1 directly. The namespace has no default route either way: nothing in it can
    reach the caller's other interfaces."""
    tag = secrets.token_hex(3)
    name = f"roomtest-{os.getpid()}-{tag}"
    subnet = _free_subnet() if exposed else random.randint(1, 254)
    ns = NetNs(name=name, server_ip=f"10.231.{subnet}.1", client_ip=f"10.231.{subnet}.2",
               client_if=f"rtv{tag}" if exposed else CLIENT_IF, exposed=exposed)
    _ip("netns", "add", name)
    try:
        _ip("-n", name, "link", "set", "lo", "up")
        _ip("-n", name, "link", "add", SERVER_IF, "type", "veth", "peer", "name", ns.client_if)
        if exposed:
            _ip("-n", name, "link", "set", ns.client_if, "netns", "1")
        for dev, addr, inside in ((SERVER_IF, ns.server_ip, True),
                                  (ns.client_if, ns.client_ip, not exposed)):
            where = ["-n", name] if inside else []
            # No IPv6 link-local address: it would only add useless ICE candidates.
            with contextlib.suppress(RuntimeError):
                _ip(*where, "link", "set", "dev", dev, "addrgenmode", "none")
            _ip(*where, "addr", "add", f"{addr}/24", "dev", dev)
            _ip(*where, "link", "set", dev, "up")
        if exposed:
            _ip("addr", "add", f"{ns.signal_ip}/24", "dev", ns.client_if)
        yield ns
    finally:
        for proc in reversed(ns.procs):
            with contextlib.suppress(Exception):
                stop_process(proc)
        # Deleting the namespace also deletes the veth pair, but the exposed end may linger
        # a moment: delete it first.
        if exposed:
            subprocess.run(["ip", "link", "delete", ns.client_if], capture_output=True,
                           timeout=10)
        subprocess.run(["ip", "netns", "delete", name], capture_output=True, timeout=10)


def remove_stale() -> list[str]:
    """Delete the namespaces that test runs which were killed (so could not clean up)
    left behind: ours are named ``roomtest-<pid>-<tag>``, and the run's pid is gone.
    Returns their names."""
    if os.geteuid() != 0 or shutil.which("ip") is None:
        return []
    listed = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True,
                            timeout=10).stdout
    removed = []
    for line in listed.splitlines():
        name = line.split()[0] if line.split() else ""
        parts = name.split("-")
        if len(parts) != 3 or parts[0] != "roomtest" or not parts[1].isdigit():
            continue
        if os.path.exists(f"/proc/{parts[1]}"):
            continue  # its run is still going
        subprocess.run(["ip", "netns", "delete", name], capture_output=True, timeout=10)
        removed.append(name)
    return removed


@functools.cache
def netns_unavailable() -> str | None:
    """Why ``netns()`` cannot work here (a pytest skip reason), or None if it can."""
    if os.geteuid() != 0:
        return "network namespaces need root"
    if shutil.which("ip") is None:
        return "`ip` not found (Debian package iproute2)"
    try:
        with netns():
            pass
    except Exception as exc:
        return f"cannot create a network namespace: {exc}"
    return None


def _self_check() -> None:
    """HTTP between the two veth addresses, inside a fresh namespace."""
    import sys
    import time

    reason = netns_unavailable()
    if reason is not None:
        raise SystemExit(f"unavailable: {reason}")
    with netns() as ns:
        server = ns.popen([sys.executable, "-m", "http.server", "--bind", ns.server_ip, "8000"],
                          stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        fetch = (  # from the client address to the server address
            "import http.client\n"
            f"c = http.client.HTTPConnection('{ns.server_ip}', 8000, timeout=2,"
            f" source_address=('{ns.client_ip}', 0))\n"
            "c.connect()\n"
            "src = c.sock.getsockname()[0]\n"
            "c.request('GET', '/')\n"
            "print(c.getresponse().status, 'from', src)\n"
        )
        deadline = time.monotonic() + 10
        while True:
            try:
                out = ns.run([sys.executable, "-c", fetch]).stdout.strip()
                break
            except subprocess.CalledProcessError:
                if time.monotonic() > deadline or server.poll() is not None:
                    raise
                time.sleep(0.2)
        addrs = ns.run(["ip", "-4", "-brief", "addr"]).stdout
        print(f"{ns.name}: GET http://{ns.server_ip}:8000/ -> {out}\n{addrs}", end="")


if __name__ == "__main__":
    _self_check()
