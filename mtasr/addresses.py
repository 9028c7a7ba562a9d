"""Hosts, ports and URLs: free ports, the address a local client connects to, and every address a
server bound to a host (a wildcard included) answers on.

Standard library only (Linux: interface addresses come from an ioctl and ``/proc/net/if_inet6``).
"""

from __future__ import annotations

import contextlib
import fcntl
import ipaddress
import socket
import struct
from pathlib import Path

__all__ = ["find_free_port", "find_free_ports", "is_loopback", "listen_urls", "port_taken", "url_host"]


def _family(host: str) -> socket.AddressFamily:
    return socket.AF_INET6 if ":" in host else socket.AF_INET


def find_free_port(host: str = "127.0.0.1") -> int:
    """A port that is free on ``host`` right now (the OS picks it; another process may take it later)."""
    (port,) = find_free_ports(1, host)
    return port


def find_free_ports(count: int, host: str = "127.0.0.1") -> list[int]:
    """``count`` distinct ports free on ``host`` right now.

    Every socket stays bound until all are chosen, so the OS cannot hand out one port twice
    (separate ``find_free_port`` calls can, once the first socket is closed).
    """
    with contextlib.ExitStack() as stack:
        ports = []
        for _ in range(count):
            s = stack.enter_context(socket.socket(_family(host), socket.SOCK_STREAM))
            s.bind((host, 0))
            ports.append(s.getsockname()[1])
        return ports


def port_taken(host: str, port: int) -> str | None:
    """Why ``port`` cannot be bound on ``host``, or None when it is free.

    SO_REUSEADDR mirrors what the server's listeners do, so a port only lingering in TIME_WAIT
    counts as free while one held by a listening process does not.
    """
    with socket.socket(_family(host), socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError as exc:
            return exc.strerror or str(exc)
    return None


def _connect_host(host: str) -> str:
    """The address a local client uses to reach a server bound to ``host``."""
    if host in ("", "0.0.0.0"):
        return "127.0.0.1"
    if host == "::":
        return "::1"
    return host


def url_host(host: str) -> str:
    """``host`` as a URL's host part for a local client (a wildcard's loopback, IPv6 in brackets)."""
    host = _connect_host(host)
    return f"[{host}]" if ":" in host else host


def _ipv4_interface_addresses() -> list[str]:
    """This machine's IPv4 addresses, one per interface that has one (Linux ioctl SIOCGIFADDR)."""
    siocgifaddr = 0x8915
    found = []
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        for _, name in socket.if_nameindex():
            try:
                packed = fcntl.ioctl(s.fileno(), siocgifaddr, struct.pack("256s", name.encode()[:15]))
            except OSError:
                continue  # interface without an IPv4 address
            found.append(socket.inet_ntoa(packed[20:24]))
    return found


def _ipv6_interface_addresses() -> list[str]:
    """This machine's IPv6 addresses (from /proc/net/if_inet6; link-local ones left out)."""
    try:
        lines = Path("/proc/net/if_inet6").read_text().splitlines()
    except OSError:
        return []
    found = []
    for line in lines:
        fields = line.split()
        if len(fields) < 6 or fields[3] == "20":  # scope 0x20: link-local, unusable without %iface
            continue
        found.append(socket.inet_ntop(socket.AF_INET6, bytes.fromhex(fields[0])))
    return found


def _is_wildcard(host: str) -> bool:
    return host in ("", "0.0.0.0", "::")


def _listen_hosts(host: str) -> list[str]:
    """The addresses a server bound to ``host`` answers on: every interface's for a wildcard."""
    if not _is_wildcard(host):
        return [host]
    addresses = _ipv4_interface_addresses()
    if host == "::":  # Linux dual-stack: IPv4 clients reach an IPv6 wildcard too
        addresses += _ipv6_interface_addresses()
    return sorted(dict.fromkeys(addresses), key=lambda a: (":" in a, not a.startswith("127."), a)) or [host]


def listen_urls(host: str, port: int, scheme: str, path: str = "") -> list[str]:
    """URLs a server bound to ``host``:``port`` can be reached at (all interfaces for 0.0.0.0 / ::)."""
    return [f"{scheme}://{f'[{h}]' if ':' in h else h}:{port}{path}" for h in _listen_hosts(host)]


def is_loopback(host: str) -> bool:
    """Whether ``host`` is reachable from this machine only (``localhost`` or a loopback address)."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False  # another name: it may resolve to anything
