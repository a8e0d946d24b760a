"""Turn the configuration into the roster of endpoints: a static list, or DNS SRV.

design: master only; never in a worker. Static endpoints are resolved here to one
socket address each (IPv4 preferred when a name has both), so workers dial
pre-resolved addresses; they are chosen by plain round robin. SRV discovery
(gateway/srv.py) runs synchronously at start, before any worker exists, and later in a
short-lived child process (`SrvRefresh`), so a slow DNS server or TLS handshake never
blocks the master's loop; its endpoints are chosen by RFC 2782. Discovery never falls
back to `--endpoints`: nothing usable at start is fatal, and a refresh that finds
nothing keeps the last good set. An endpoint that would reach the gateway's own
listener is refused (the original's self-loop check, extended to wildcard listeners).
"""
from __future__ import annotations

import json
import os
import signal
import socket
from dataclasses import dataclass
from typing import Callable

from gateway import addresses, srv
from gateway import log as gwlog
from gateway.config import MAX_ENDPOINTS, Config, ConfigError
from gateway.health import RFC2782, ROUND_ROBIN, Endpoint
from gateway.loop import READ, Loop, Timer

logger = gwlog.get("discovery")

DNS_TIMEOUT = 2.0        # per query, and per TLS validation (at least the dial timeout)
REFRESH_BOUND = 60.0     # a refresh child that takes longer is killed


class DiscoveryError(Exception):
    """Nothing usable was discovered (one line, with the reasons)."""


@dataclass(frozen=True)
class Roster:
    endpoints: list[Endpoint]
    policy: int               # ROUND_ROBIN or RFC2782


def resolve(config: Config) -> Roster:
    """The roster for `config`, at start. ConfigError for a bad static endpoint,
    DiscoveryError when SRV discovery finds nothing usable (never a fallback)."""
    if not config.discovery_srv:
        return Roster(resolve_static(config), ROUND_ROBIN)
    found = discover_srv(config)
    if not found.endpoints:
        raise DiscoveryError(
            f"option --discovery-srv: nothing usable found for {config.discovery_srv!r}: "
            + "; ".join(found.errors or ["no records"]))
    if "endpoints" in config.sources:
        logger.info("ignoring --endpoints: using the members found by SRV discovery",
                    extra=gwlog.fields(endpoints=[str(e) for e in config.endpoints]))
    return Roster(found.endpoints, RFC2782)


def discover_srv(config: Config) -> srv.Discovery:
    """SRV discovery as configured (blocking, bounded), minus self-loops."""
    found = srv.discover(config.discovery_srv, config.discovery_srv_name,
                         config.insecure_discovery,
                         # validated with the CA TLS origination verifies them with
                         config.cacert or config.trusted_ca_file,
                         config.discovery_srv_resolver, max(DNS_TIMEOUT, config.dial_timeout))
    listens = _listen_resolved(config)
    kept = []
    for ep in found.endpoints:
        target = addresses.Resolved(ep.family, ep.sockaddr)
        if _own_listener(listens, target) is not None:
            found.errors.append(f"{ep.label} resolves to {ep.address}, the gateway's own "
                                "--listen-addr: dropped")
        else:
            kept.append(ep)
    if len(kept) > MAX_ENDPOINTS:
        kept.sort(key=lambda ep: ep.priority)
        found.errors.append(f"{len(kept)} members found; using the {MAX_ENDPOINTS} of "
                            "lowest priority (the most the gateway holds)")
        kept = kept[:MAX_ENDPOINTS]
    found.endpoints = kept
    return found


def _listen_resolved(config: Config) -> list[tuple[addresses.HostPort, list[addresses.Resolved]]]:
    """Each TCP listen address with what it binds (a unix socket cannot be dialled)."""
    out = []
    for listen in addresses.tcp_listen_addrs(config.listen_addr):
        try:
            out.append((listen, addresses.resolve(listen, passive=True)))
        except (OSError, UnicodeError):
            out.append((listen, []))
    return out


def _own_listener(listens: list[tuple[addresses.HostPort, list[addresses.Resolved]]],
                  target: addresses.Resolved) -> addresses.HostPort | None:
    """The gateway's own listen address that `target` would reach, if any."""
    for listen, resolved in listens:
        if addresses.listen_addrs_cover(listen, resolved, target):
            return listen
    return None


def resolve_static(config: Config) -> list[Endpoint]:
    """The `--endpoints` list as roster entries; ConfigError names the bad one."""
    listens = _listen_resolved(config)
    out: dict[tuple, Endpoint] = {}
    for hp in config.endpoints:
        try:
            found = addresses.resolve(hp)
        except (OSError, UnicodeError) as exc:  # UnicodeError: a DNS label over 63 bytes
            raise ConfigError(f"option --endpoints: cannot resolve {str(hp)!r}: "
                              f"{getattr(exc, 'strerror', None) or exc}") from None
        if not found:
            raise ConfigError(f"option --endpoints: {str(hp)!r} resolves to no address")
        target = sorted(found, key=lambda r: r.family != socket.AF_INET)[0]
        for candidate in found:
            listen = _own_listener(listens, candidate)
            if listen is not None:
                raise ConfigError(
                    f"option --endpoints: {str(hp)!r} resolves to {candidate}, the "
                    f"gateway's own --listen-addr {listen}: it would relay to itself")
        ep = Endpoint(label=str(hp), family=target.family, ip=target.ip, port=target.port,
                      scope_id=target.scope_id)
        out.setdefault(ep.sockaddr, ep)
    return list(out.values())


class SrvRefresh:
    """One SRV discovery run in a child process; `on_done(Discovery)` is called once,
    from the master's loop, with the result or with the reason it failed."""

    def __init__(self, loop: Loop, config: Config, on_done: Callable[[srv.Discovery], None],
                 blocked_signals: tuple[int, ...]):
        self.loop = loop
        self.config = config
        self.on_done = on_done
        self.blocked = blocked_signals
        self.pid = 0
        self._fd = -1
        self._data = b""
        self._timer: Timer | None = None

    @property
    def running(self) -> bool:
        return self._fd >= 0

    def start(self) -> None:
        try:
            r, w = os.pipe()
        except OSError as exc:
            self.on_done(srv.Discovery([], [f"cannot start the SRV refresh: {exc.strerror}"]))
            return
        old_mask = signal.pthread_sigmask(signal.SIG_BLOCK, self.blocked)
        try:
            pid = os.fork()
        except OSError as exc:
            signal.pthread_sigmask(signal.SIG_SETMASK, old_mask)
            os.close(r)
            os.close(w)
            self.on_done(srv.Discovery([], [f"cannot fork the SRV refresh: {exc.strerror}"]))
            return
        if pid == 0:
            self._child(r, w)  # never returns
        signal.pthread_sigmask(signal.SIG_SETMASK, old_mask)
        os.close(w)
        os.set_blocking(r, False)
        self.pid, self._fd = pid, r
        self.loop.selector.register(r, READ, self._readable)
        self._timer = self.loop.call_later(REFRESH_BOUND, self._timeout)

    def _child(self, r: int, w: int) -> None:
        status = 1
        try:
            for signum in self.blocked:
                signal.signal(signum, signal.SIG_DFL)
            os.closerange(3, w)          # the listener, the epoll fd, the wake-up pair...
            os.closerange(w + 1, 65536)  # ...so nothing of the master's stays open here
            signal.pthread_sigmask(signal.SIG_SETMASK, set())
            c = self.config
            gwlog.setup(c.log_level, c.log_format, c.log_file)
            payload = srv.to_json(discover_srv(c)).encode()
            view = memoryview(payload)
            while view:
                view = view[os.write(w, view):]
            status = 0
        except BaseException:  # noqa: B902 - a child must never return into the master
            logger.exception("SRV refresh failed")
        finally:
            os._exit(status)

    def _readable(self, fd: int, mask: int) -> None:
        try:
            chunk = os.read(self._fd, 65536)
        except BlockingIOError:
            return
        if chunk:
            self._data += chunk
            return
        try:
            result = srv.from_json(self._data.decode())
        except (ValueError, KeyError, json.JSONDecodeError):
            result = srv.Discovery([], ["the SRV refresh ended without a result"])
        self._finish(result)

    def _timeout(self) -> None:
        try:
            os.kill(self.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        self._finish(srv.Discovery([], [f"the SRV refresh took over {REFRESH_BOUND:g}s"]))

    def _finish(self, result: srv.Discovery) -> None:
        if self._fd < 0:
            return
        self.loop.selector.unregister(self._fd)
        os.close(self._fd)
        self._fd = -1
        if self._timer is not None:
            self._timer.cancel()
        self.on_done(result)

    def close_after_fork(self) -> None:
        """In a new worker: close the inherited copy of the result pipe."""
        if self._fd >= 0:
            os.close(self._fd)

    def cancel(self) -> None:
        """Stop waiting (at shutdown); the child is killed, its result ignored."""
        if self._fd >= 0:
            self.on_done = lambda result: None
            self._timeout()


def refresh_period(config: Config) -> float | None:
    """Seconds between periodic SRV refreshes, or None when there are none."""
    if config.discovery_srv and config.discovery_srv_refresh > 0:
        return config.discovery_srv_refresh
    return None
