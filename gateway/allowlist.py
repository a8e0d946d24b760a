"""--allow-from: which client addresses a TCP listener lets in.

design: the networks are parsed once (configuration time) into (network, mask)
integers per address family, so the check at accept is a few integer operations on
the address the kernel returned, with no object built per client. An IPv4-mapped IPv6
address (`::ffff:10.1.2.3`, what a dual-stack listener reports for an IPv4 client) is
checked against the IPv4 rules, so one rule covers a client whichever socket family
accepted it. Unix socket listeners are not filtered (file permissions decide there).
"""
from __future__ import annotations

import ipaddress
import socket

_MAPPED_PREFIX = b"\0" * 10 + b"\xff\xff"


class AllowList:
    """An immutable set of networks; empty means everyone."""
    __slots__ = ("networks", "_v4", "_v6")

    def __init__(self, networks: tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...]):
        self.networks = networks
        self._v4 = tuple((int(n.network_address), int(n.netmask))
                         for n in networks if n.version == 4)
        self._v6 = tuple((int(n.network_address), int(n.netmask))
                         for n in networks if n.version == 6)

    def __bool__(self) -> bool:
        return bool(self.networks)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, AllowList) and other.networks == self.networks

    def __hash__(self) -> int:
        return hash(self.networks)

    def __str__(self) -> str:
        return ",".join(str(n) for n in self.networks)

    def allows(self, host: str) -> bool:
        """Whether a client at `host` (as accept() reports it) may come in."""
        if not self.networks:
            return True
        try:
            if ":" in host:
                packed = socket.inet_pton(socket.AF_INET6, host.split("%", 1)[0])
                if packed[:12] == _MAPPED_PREFIX:
                    return _member(int.from_bytes(packed[12:], "big"), self._v4)
                return _member(int.from_bytes(packed, "big"), self._v6)
            return _member(int.from_bytes(socket.inet_aton(host), "big"), self._v4)
        except OSError:
            return False  # not an address we understand: not in the list


def _member(value: int, networks: tuple[tuple[int, int], ...]) -> bool:
    return any(value & mask == network for network, mask in networks)


def parse(values: list[str]) -> AllowList:
    """CIDRs (or bare addresses) separated by commas, repeatable; ValueError names the
    bad one. Host bits set (10.1.2.3/8) are refused: write the network."""
    out: dict[ipaddress.IPv4Network | ipaddress.IPv6Network, None] = {}
    for value in values:
        for item in value.split(","):
            item = item.strip()
            if not item:
                continue
            try:
                out.setdefault(ipaddress.ip_network(item, strict=True), None)
            except ValueError as exc:
                raise ValueError(f"bad network {item!r}: {exc} (want CIDRs such as "
                                 "10.0.0.0/8,fd00::/8)") from None
    return AllowList(tuple(out))
