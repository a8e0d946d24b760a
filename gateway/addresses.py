"""Host:port parsing for endpoints and the listen address, and their resolution.

design: the original silently strips `https://`, turns a bad port into 0 and breaks on
IPv6 literals. Here every form is checked once, at configuration time, and the errors
say what to write instead. Name resolution happens only in the master (at start and on
reload), so workers connect to pre-resolved socket addresses and never block on DNS.
"""
from __future__ import annotations

import ipaddress
import os
import re
import socket
from dataclasses import dataclass

DEFAULT_ETCD_PORT = 2379


@dataclass(frozen=True)
class HostPort:
    host: str  # without brackets; "" means every interface (listen address only)
    port: int
    tls: bool = False  # an endpoint written https://: the gateway dials it with TLS

    def __str__(self) -> str:
        text = join_host_port(self.host, self.port)
        return "https://" + text if self.tls else text


def join_host_port(host: str, port: int) -> str:
    if ":" in host:
        return f"[{host}]:{port}"
    return f"{host}:{port}"


def _parse_port(text: str, whole: str) -> int:
    if not text.isdigit():
        raise ValueError(f"bad port {text!r} in {whole!r}")
    port = int(text)
    if not 1 <= port <= 65535:
        raise ValueError(f"port {port} out of range 1-65535 in {whole!r}")
    return port


def _split(text: str, default_port: int | None) -> HostPort:
    whole = text
    if text.startswith("["):
        close = text.find("]")
        if close < 0:
            raise ValueError(f"missing ']' in {whole!r}")
        host, rest = text[1:close], text[close + 1:]
        _check_ipv6(host, whole)
        if rest == "":
            port_text = None
        elif rest.startswith(":"):
            port_text = rest[1:]
        else:
            raise ValueError(f"unexpected {rest!r} after ']' in {whole!r}")
    elif text.count(":") > 1:
        raise ValueError(f"IPv6 address must be in brackets, e.g. [::1]:2379, not {whole!r}")
    elif ":" in text:
        host, port_text = text.rsplit(":", 1)
    else:
        host, port_text = text, None
    if port_text is None:
        if default_port is None:
            raise ValueError(f"missing port in {whole!r} (want host:port)")
        port = default_port
    else:
        port = _parse_port(port_text, whole)
    if any(c.isspace() for c in host) or "/" in host:
        raise ValueError(f"bad host {host!r} in {whole!r}")
    return HostPort(host, port)


def _check_ipv6(host: str, whole: str) -> None:
    try:
        address = ipaddress.IPv6Address(host)
    except ValueError:
        raise ValueError(f"bad IPv6 address {host!r} in {whole!r}") from None
    if address.is_link_local and "%" not in host:
        raise ValueError(f"link-local address {host!r} in {whole!r} needs its interface, "
                         f"e.g. [{host}%eth0]")
    if "%" in host:
        zone = host.split("%", 1)[1]
        if not zone_index(zone):
            raise ValueError(f"no interface {zone!r} for the zone of {whole!r} (a link-local "
                             "address names its interface, e.g. [fe80::1%eth0]:2379)")
        if zone_index(zone) > 0xFFFF:
            raise ValueError(f"interface index of {zone!r} in {whole!r} is over 65535")


def zone_index(zone: str) -> int:
    """The interface index an IPv6 zone (`eth0`, or a number) names; 0 if none."""
    if zone.isdigit():
        try:
            socket.if_indextoname(int(zone))
        except (OSError, OverflowError):
            return 0
        return int(zone)
    try:
        return socket.if_nametoindex(zone)
    except OSError:
        return 0


def with_zone(ip: str, scope_id: int) -> str:
    """`ip%zone` for a scoped IPv6 address (the interface's name, else its index)."""
    if not scope_id:
        return ip
    try:
        return f"{ip}%{socket.if_indextoname(scope_id)}"
    except OSError:
        return f"{ip}%{scope_id}"


def parse_endpoint(text: str) -> HostPort:
    """`[scheme://]host[:port]` or `[v6][:port]`; the port defaults to 2379. `https://`
    means the gateway dials the member with TLS; `http://` and no scheme are plain TCP
    relays (TLS from a client passes through them unchanged); other schemes are refused."""
    text = text.strip()
    tls = False
    if "://" in text:
        scheme, _, rest = text.partition("://")
        if scheme.lower() not in ("http", "https"):
            raise ValueError(f"{text!r}: unknown scheme {scheme!r} (want https://, http:// "
                             "or none)")
        tls = scheme.lower() == "https"
        text = rest.rstrip("/")
    if not text:
        raise ValueError("empty endpoint")
    hp = _split(text, DEFAULT_ETCD_PORT)
    if not hp.host:
        raise ValueError(f"missing host in {text!r}")
    return HostPort(hp.host, hp.port, tls)


def parse_endpoint_list(values: list[str]) -> list[HostPort]:
    """Separated by commas or white space (`"a:1 b:2"` from a shell variable), repeatable;
    duplicates removed, order kept. https:// and plain endpoints cannot be mixed:
    the whole list is dialled one way."""
    seen: dict[HostPort, None] = {}
    for value in values:
        for item in re.split(r"[,\s]+", value):
            if item:
                seen.setdefault(parse_endpoint(item), None)
    if len({hp.tls for hp in seen}) > 1:
        raise ValueError("mixes https:// and plain endpoints: the gateway dials every "
                         "member the same way (all https://, or none)")
    return list(seen)


def parse_listen_addr(text: str) -> HostPort:
    """`host:port`, `[v6]:port` or `:port` (every interface); a port is required."""
    text = text.strip()
    if "://" in text:
        raise ValueError(f"{text!r} has a scheme; give host:port")
    if not text:
        raise ValueError("empty listen address")
    return _split(text, None)


# -- listen addresses: TCP or a unix socket ---------------------------------------------
UNIX_SCHEME = "unix://"
UNIX_PATH_MAX = 107  # sun_path holds 108 bytes, the last one a NUL


@dataclass(frozen=True)
class UnixPath:
    """A unix socket listen address: `unix:///run/etcd-gatewayd/gateway.sock`."""
    path: str  # absolute

    def __str__(self) -> str:
        return UNIX_SCHEME + self.path


ListenAddr = HostPort | UnixPath


def parse_listen_target(text: str) -> ListenAddr:
    """One listen address: `host:port`, `[v6]:port`, `:port`, or `unix:///abs/path`."""
    text = text.strip()
    if text.startswith(UNIX_SCHEME):
        path = text[len(UNIX_SCHEME):]
        if not path.startswith("/"):
            raise ValueError(f"unix socket path in {text!r} must be absolute "
                             "(unix:///run/etcd-gatewayd/gateway.sock)")
        if path.endswith("/") or "\0" in path:
            raise ValueError(f"bad unix socket path in {text!r}")
        if len(os.fsencode(path)) > UNIX_PATH_MAX:
            raise ValueError(f"unix socket path in {text!r} is longer than "
                             f"{UNIX_PATH_MAX} bytes")
        return UnixPath(os.path.normpath(path))
    return parse_listen_addr(text)


def parse_listen_list(values: list[str]) -> list[ListenAddr]:
    """Listen addresses separated by commas, repeatable; duplicates removed, order kept."""
    seen: dict[ListenAddr, None] = {}
    for value in values:
        for item in value.split(","):
            if item.strip():
                seen.setdefault(parse_listen_target(item), None)
    if not seen:
        raise ValueError("no listen address given")
    return list(seen)


def tcp_listen_addrs(addrs: tuple[ListenAddr, ...] | list[ListenAddr]) -> list[HostPort]:
    return [a for a in addrs if isinstance(a, HostPort)]


@dataclass(frozen=True)
class Resolved:
    """One socket address a worker can connect to (or the master can bind)."""
    family: int
    sockaddr: tuple

    @property
    def ip(self) -> str:
        return self.sockaddr[0]

    @property
    def port(self) -> int:
        return self.sockaddr[1]

    @property
    def scope_id(self) -> int:
        """The interface of a link-local IPv6 address (0: none)."""
        return self.sockaddr[3] if len(self.sockaddr) > 3 else 0

    def __str__(self) -> str:
        return join_host_port(with_zone(self.ip, self.scope_id), self.port)


def resolve(hp: HostPort, passive: bool = False) -> list[Resolved]:
    """All TCP socket addresses for `hp` (getaddrinfo); raises OSError on failure."""
    host = hp.host or None
    flags = socket.AI_PASSIVE if passive else 0
    infos = socket.getaddrinfo(host, hp.port, socket.AF_UNSPEC, socket.SOCK_STREAM,
                               socket.IPPROTO_TCP, flags)
    out: dict[Resolved, None] = {}
    for family, _, _, _, sockaddr in infos:
        # an IPv6 address keeps its scope id (the zone of fe80::1%eth0): without it a
        # link-local address cannot be dialled (EINVAL)
        scope_id = sockaddr[3] if len(sockaddr) > 3 else 0  # type: ignore[misc]
        out.setdefault(Resolved(family, (sockaddr[0], sockaddr[1], 0, scope_id) if scope_id
                                else tuple(sockaddr[:2])), None)
    return list(out)


def listen_addrs_cover(listen: HostPort, listen_resolved: list[Resolved],
                       target: Resolved) -> bool:
    """True when connecting to `target` would reach the gateway's own listener."""
    if target.port != listen.port:
        return False
    for lr in listen_resolved:
        ip = ipaddress.ip_address(lr.ip)
        if ip.is_unspecified:
            tip = ipaddress.ip_address(target.ip)
            if tip.is_loopback or tip.is_unspecified or _is_local_address(target.ip):
                return True
        elif lr.ip == target.ip:
            return True
    return False


def _is_local_address(ip: str) -> bool:
    """True when `ip` is assigned to this host (bind test: only local addresses bind)."""
    family = socket.AF_INET6 if ":" in ip else socket.AF_INET
    try:
        with socket.socket(family, socket.SOCK_STREAM) as s:
            s.bind((ip, 0))
        return True
    except OSError:
        return False
