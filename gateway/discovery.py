"""Turn the configuration into the roster of endpoints: static list (and, later, SRV).

design: master only; runs at start and on reload, never in a worker. Every endpoint
is resolved here to one socket address (IPv4 preferred when a name has both), so
workers dial pre-resolved addresses. An endpoint that would reach the gateway's own
listener is refused (the original's self-loop check, extended to wildcard listeners).
"""
from __future__ import annotations

import socket

from gateway import addresses
from gateway.config import Config, ConfigError
from gateway.health import Endpoint


def resolve(config: Config) -> list[Endpoint]:
    """The roster for `config`; never falls back from discovery to `--endpoints`."""
    if config.discovery_srv:
        raise ConfigError(f"option --discovery-srv: {config.discovery_srv!r}: SRV discovery "
                          "is not available in this build; give --endpoints instead")
    return resolve_static(config)


def resolve_static(config: Config) -> list[Endpoint]:
    """The `--endpoints` list as roster entries; ConfigError names the bad one."""
    listen = config.listen_addr
    try:
        listen_resolved = addresses.resolve(listen, passive=True)
    except OSError:
        listen_resolved = []
    out: dict[tuple, Endpoint] = {}
    for hp in config.endpoints:
        try:
            found = addresses.resolve(hp)
        except OSError as exc:
            raise ConfigError(f"option --endpoints: cannot resolve {str(hp)!r}: "
                              f"{getattr(exc, 'strerror', exc)}") from None
        if not found:
            raise ConfigError(f"option --endpoints: {str(hp)!r} resolves to no address")
        target = sorted(found, key=lambda r: r.family != socket.AF_INET)[0]
        for candidate in found:
            if addresses.listen_addrs_cover(listen, listen_resolved, candidate):
                raise ConfigError(
                    f"option --endpoints: {str(hp)!r} resolves to {candidate}, the "
                    f"gateway's own --listen-addr {listen}: it would relay to itself")
        ep = Endpoint(label=str(hp), family=target.family, ip=target.ip, port=target.port)
        out.setdefault(ep.sockaddr, ep)
    return list(out.values())
