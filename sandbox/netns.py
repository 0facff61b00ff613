"""The lab's network: one namespace per host, bridged inside a lab namespace, 127.100.0.x addresses only.

Nothing here touches the root network namespace except creating (and at once moving away) the veth peer
`<prefix>-v<i>`; every address lives inside namespaces the lab creates.
"""
from __future__ import annotations

import ctypes
import os
import socket
import subprocess
import threading
from pathlib import Path

from sandbox.errors import LabError

NETNS_DIR = Path("/run/netns")
BRIDGE = "br0"
LAB_BRIDGE_ADDR = "127.100.0.1/16"
CLONE_NEWNET = 0x40000000


def lab_netns(prefix: str) -> str:
    """Name of the lab namespace that holds the bridge (and where the SSH ProxyCommand runs)."""
    return f"{prefix}-lab"


def host_netns(prefix: str, index: int) -> str:
    """Name of host number `index`'s network namespace."""
    return f"{prefix}-h{index}"


def host_veth(prefix: str, index: int) -> str:
    """Name of host `index`'s veth end on the lab bridge (the host side is called eth0)."""
    return f"{prefix}-v{index}"


def host_ip(index: int) -> str:
    """Address of host number `index` (1-based): 127.100.0.(10+index)."""
    return f"127.100.0.{10 + index}"


def _ip(*args: str) -> None:
    """Run `ip ARGS`; raise LabError with ip's own message on failure."""
    proc = subprocess.run(["ip", *args], capture_output=True, text=True)
    if proc.returncode != 0:
        raise LabError(f"`ip {' '.join(args)}` failed: {proc.stderr.strip()}")


def _sysctl_in(ns: str, *settings: str) -> None:
    """Set sysctls inside namespace `ns` (never in the root namespace)."""
    proc = subprocess.run(["ip", "netns", "exec", ns, "sysctl", "-qw", *settings], capture_output=True, text=True)
    if proc.returncode != 0:
        raise LabError(f"sysctl in netns {ns} failed: {proc.stderr.strip()}")


def _loopback_only_self(ns: str) -> None:
    """Bring `lo` up in `ns` with 127.0.0.1/32 so the rest of 127/8 is routable over eth0/br0."""
    _ip("-n", ns, "link", "set", "lo", "up")
    _ip("-n", ns, "addr", "del", "127.0.0.1/8", "dev", "lo")
    _ip("-n", ns, "addr", "add", "127.0.0.1/32", "dev", "lo")


def netns_exists(name: str) -> bool:
    """True if the named network namespace is registered under /run/netns."""
    return (NETNS_DIR / name).exists()


def list_netns(prefix: str) -> list[str]:
    """Registered namespaces that belong to the lab `prefix` (`<prefix>-lab`, `<prefix>-h<i>`)."""
    if not NETNS_DIR.is_dir():
        return []
    return sorted(n for n in os.listdir(NETNS_DIR) if n == lab_netns(prefix) or n.startswith(f"{prefix}-h"))


def create_lab_network(prefix: str) -> None:
    """Create `<prefix>-lab` with bridge br0 at 127.100.0.1/16. Side effects: a new netns."""
    ns = lab_netns(prefix)
    _ip("netns", "add", ns)
    _loopback_only_self(ns)
    _ip("-n", ns, "link", "add", BRIDGE, "type", "bridge")
    _ip("-n", ns, "link", "set", BRIDGE, "up")
    _sysctl_in(ns, "net.ipv4.conf.all.route_localnet=1", f"net.ipv4.conf.{BRIDGE}.route_localnet=1",
               "net.ipv6.conf.all.disable_ipv6=1")
    _ip("-n", ns, "addr", "add", LAB_BRIDGE_ADDR, "dev", BRIDGE)


def create_host_network(prefix: str, index: int) -> None:
    """Create host `index`'s netns with eth0 = host_ip(index)/16, its peer enslaved to the lab bridge."""
    ns, veth, lab = host_netns(prefix, index), host_veth(prefix, index), lab_netns(prefix)
    _ip("netns", "add", ns)
    _loopback_only_self(ns)
    _ip("link", "add", veth, "type", "veth", "peer", "name", "eth0", "netns", ns)
    _ip("link", "set", veth, "netns", lab)
    _ip("-n", lab, "link", "set", veth, "master", BRIDGE, "up")
    _sysctl_in(ns, "net.ipv4.conf.all.route_localnet=1", "net.ipv4.conf.eth0.route_localnet=1",
               "net.ipv6.conf.all.disable_ipv6=1")
    _ip("-n", ns, "addr", "add", f"{host_ip(index)}/16", "dev", "eth0")
    _ip("-n", ns, "link", "set", "eth0", "up")


def set_host_link(prefix: str, index: int, up: bool) -> None:
    """Set host `index`'s eth0 up or down (down = the host is partitioned from every other host)."""
    _ip("-n", host_netns(prefix, index), "link", "set", "eth0", "up" if up else "down")


def host_link_is_up(prefix: str, index: int) -> bool:
    """True if host `index`'s eth0 is administratively up."""
    proc = subprocess.run(["ip", "-n", host_netns(prefix, index), "-o", "link", "show", "eth0"],
                          capture_output=True, text=True)
    if proc.returncode != 0 or "<" not in proc.stdout:
        return False
    flags = proc.stdout.split("<", 1)[1].split(">", 1)[0].split(",")
    return "UP" in flags


def delete_netns(name: str) -> None:
    """Delete a namespace (its veths go with it). Idempotent."""
    if netns_exists(name):
        _ip("netns", "del", name)


def veths_in_root(prefix: str) -> list[str]:
    """Veth names of lab `prefix` that are visible in the root namespace (should be none)."""
    proc = subprocess.run(["ip", "-o", "link", "show"], capture_output=True, text=True, check=True)
    names = [line.split(":")[1].strip().split("@")[0] for line in proc.stdout.splitlines() if ":" in line]
    return [n for n in names if n.startswith(f"{prefix}-v")]


def tcp_port_open(ns: str, ip: str, port: int, timeout_s: float = 0.5) -> bool:
    """True if `ip:port` accepts a TCP connection from inside namespace `ns` (probe via setns in a thread)."""
    result: dict[str, bool] = {}

    def probe() -> None:
        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        with open(NETNS_DIR / ns) as handle:
            if libc.setns(handle.fileno(), CLONE_NEWNET) != 0:
                result["open"] = False
                return
        try:
            with socket.create_connection((ip, port), timeout=timeout_s):
                result["open"] = True
        except OSError:
            result["open"] = False

    thread = threading.Thread(target=probe, daemon=True)
    thread.start()
    thread.join(timeout_s + 1)
    return result.get("open", False)
