"""Turn the configuration into the roster of endpoints: `--endpoints`, or DNS SRV.

design: master only (or a short-lived child of it, gateway/resolver.py); never in a
worker. Host names in `--endpoints` are resolved as the system resolves them
(getaddrinfo: /etc/hosts, then DNS per nsswitch.conf and resolv.conf), to every address
of every family the host can reach: a name with three addresses is three roster
entries, each labelled by the name. IP literals are used as written and never looked
up again. SRV discovery is in gateway/srv.py. Lookups run synchronously only at start
(before any worker exists; a name that does not resolve is a ConfigError, SRV that
finds nothing a DiscoveryError); while running, `lookup` runs in a child and a name
that stops resolving keeps the addresses it had (`known`), never an empty roster.
The TCP listen addresses (what a self-loop is judged against) are resolved once at
start (`listens_at_start`); a reload reuses them and parses literals, and refuses a
listen or metrics host name it brings (`listens_for_reload`, `refuse_new_name`): the
master's loop never waits on DNS.
Static endpoints are chosen by plain round robin, SRV ones by RFC 2782. An endpoint
that would reach the gateway's own listener is refused at start and dropped later
(the original's self-loop check, extended to wildcard listeners). The roster holds
MAX_ENDPOINTS entries: past that, names share the room (each keeps at least one).
"""
from __future__ import annotations

import concurrent.futures
import ipaddress
import json
import socket
import time
from dataclasses import asdict, dataclass, field

from gateway import addresses, srv
from gateway import log as gwlog
from gateway.config import Config, ConfigError
from gateway.endpoints import MAX_ENDPOINTS, Endpoint, Order, RosterEntry

logger = gwlog.get("discovery")

DNS_TIMEOUT = 2.0        # per query, and per TLS validation (at least the dial timeout)
NAMES_BOUND = 20.0       # a lookup of --endpoints names answers within this, whatever DNS does


class DiscoveryError(Exception):
    """Nothing usable was discovered (one line, with the reasons)."""


@dataclass(frozen=True)
class Roster:
    endpoints: list[Endpoint]
    policy: Order


@dataclass
class Answer:
    """What one lookup found; JSON-able, so a child can pass it up a pipe."""
    endpoints: list[Endpoint]
    policy: Order
    errors: list[str] = field(default_factory=list)       # one line per problem
    unresolved: list[str] = field(default_factory=list)   # names kept at their last addresses

    def to_json(self) -> str:
        return json.dumps({"endpoints": [asdict(ep) for ep in self.endpoints],
                           "policy": int(self.policy), "errors": self.errors,
                           "unresolved": self.unresolved})

    @classmethod
    def from_json(cls, text: str) -> "Answer":
        data = json.loads(text)
        return cls([Endpoint(**ep) for ep in data["endpoints"]], Order(int(data["policy"])),
                   [str(e) for e in data["errors"]], [str(n) for n in data["unresolved"]])


def resolve(config: Config) -> Roster:
    """The roster for `config`, at start. ConfigError for a bad static endpoint,
    DiscoveryError when SRV discovery finds nothing usable (never a fallback)."""
    if not config.discovery_srv:
        return Roster(resolve_static(config), Order.ROUND_ROBIN)
    found = discover_srv(config)
    if not found.endpoints:
        raise DiscoveryError(
            f"option --discovery-srv: nothing usable found for {config.discovery_srv!r}: "
            + "; ".join(found.errors or ["no records"]))
    if "endpoints" in config.sources:
        logger.info("ignoring --endpoints: using the members found by SRV discovery",
                    extra=gwlog.fields(endpoints=[str(e) for e in config.endpoints]))
    return Roster(found.endpoints, Order.RFC2782)


def lookup(config: Config, known: dict[str, list[Endpoint]]) -> Answer:
    """Look the configured endpoints up again (blocking, bounded: run it in a child).
    `known`: the addresses each name has now, kept for a name that does not resolve."""
    if config.discovery_srv:
        found = discover_srv(config)
        return Answer(found.endpoints, Order.RFC2782, found.errors)
    listens = _listen_resolved(config)
    answers = _resolve_all(config.endpoints)
    groups: list[tuple[str, list[addresses.Resolved]]] = []
    out = Answer([], Order.ROUND_ROBIN)
    for hp in config.endpoints:
        label = str(hp)
        addrs = answers[hp]
        if isinstance(addrs, str):
            out.errors.append(f"cannot resolve {label!r}: {addrs}")
            out.unresolved.append(label)
            groups.append((label, [addresses.Resolved(ep.family, ep.sockaddr)
                                   for ep in known.get(label, [])]))
            continue
        kept = []
        for candidate in addrs:
            if _own_listener(listens, candidate) is not None:
                out.errors.append(f"{label} resolves to {candidate}, the gateway's own "
                                  "--listen-addr: dropped")
            else:
                kept.append(candidate)
        groups.append((label, kept))
    out.endpoints = _assemble(groups, out.errors)
    return out


def is_name(hp: addresses.HostPort) -> bool:
    """True for a host name (looked up again while running), False for an IP literal."""
    try:
        ipaddress.ip_address(hp.host)
    except ValueError:
        return True
    return False


def names(config: Config) -> list[str]:
    """Labels of the `--endpoints` given by host name (none with SRV discovery)."""
    if config.discovery_srv:
        return []
    return [str(hp) for hp in config.endpoints if is_name(hp)]


def resolve_name(hp: addresses.HostPort) -> list[addresses.Resolved]:
    """Every address of `hp` the host can reach (all of them if it can reach none, so
    the dial says why); raises OSError or UnicodeError when it does not resolve."""
    found = addresses.resolve(hp)
    if not found:
        raise OSError(f"{str(hp)!r} resolves to no address")
    reachable = [r for r in found if _routable(r)]
    return reachable or found


def _routable(target: addresses.Resolved) -> bool:
    """True when the host has a route to `target`'s address (a UDP connect sends
    nothing: it only asks the kernel), so IPv6 is used exactly where it works."""
    try:
        with socket.socket(target.family, socket.SOCK_DGRAM) as probe:
            probe.connect(target.sockaddr)
        return True
    except OSError:
        return False


def _resolve_all(hps: tuple[addresses.HostPort, ...]
                 ) -> dict[addresses.HostPort, list[addresses.Resolved] | str]:
    """{endpoint: its addresses, or why not}: names in parallel (getaddrinfo has no
    timeout of its own), the whole bounded by NAMES_BOUND."""
    out: dict[addresses.HostPort, list[addresses.Resolved] | str] = {}
    pool = concurrent.futures.ThreadPoolExecutor(max_workers=min(16, max(1, len(hps))))
    futures = {hp: pool.submit(resolve_name, hp) for hp in hps}
    deadline = time.monotonic() + NAMES_BOUND
    for hp, future in futures.items():
        try:
            out[hp] = future.result(timeout=max(0.0, deadline - time.monotonic()))
        except concurrent.futures.TimeoutError:
            out[hp] = f"no answer within {NAMES_BOUND:g}s"
        except (OSError, UnicodeError) as exc:  # UnicodeError: a DNS label over 63 bytes
            out[hp] = str(getattr(exc, "strerror", None) or exc)
    pool.shutdown(wait=False, cancel_futures=True)
    return out


def _assemble(groups: list[tuple[str, list[addresses.Resolved]]],
              notes: list[str]) -> list[Endpoint]:
    """Roster entries for (label, addresses) groups: one per distinct address, the
    first label wins; past MAX_ENDPOINTS the groups take turns, so each keeps one."""
    seen: set[tuple] = set()
    queues = []
    for label, found in groups:
        queue = []
        for r in found:
            if r.sockaddr not in seen:
                seen.add(r.sockaddr)
                queue.append(Endpoint(label=label, family=r.family, ip=r.ip, port=r.port,
                                      scope_id=r.scope_id))
        queues.append(queue)
    total = sum(len(q) for q in queues)
    if total <= MAX_ENDPOINTS:
        return [ep for queue in queues for ep in queue]
    notes.append(f"the endpoints resolve to {total} addresses; using {MAX_ENDPOINTS} "
                 "(the most the gateway holds), shared among the names")
    chosen: set[int] = set()
    for depth in range(MAX_ENDPOINTS):
        for queue in queues:
            if depth < len(queue) and len(chosen) < MAX_ENDPOINTS:
                chosen.add(id(queue[depth]))
    return [ep for queue in queues for ep in queue if id(ep) in chosen]


def known_addresses(roster: list[RosterEntry]) -> dict[str, list[Endpoint]]:
    """{label: endpoints} of the roster now: what a name keeps if it stops resolving."""
    out: dict[str, list[Endpoint]] = {}
    for entry in roster:
        out.setdefault(entry.endpoint.label, []).append(entry.endpoint)
    return out


Listens = list[tuple[addresses.HostPort, list[addresses.Resolved]]]


def provisional(config: Config, roster: list[RosterEntry],
                listens: Listens) -> list[Endpoint]:
    """A reload's roster before its lookup answers (nothing is resolved here): the IP
    literals, and the addresses the names still configured have now. `listens`: the
    reload's listen addresses (`listens_for_reload`). ConfigError for a literal that is
    the gateway's own listen address."""
    known = known_addresses(roster)
    groups: list[tuple[str, list[addresses.Resolved]]] = []
    for hp in config.endpoints:
        label = str(hp)
        if is_name(hp):
            groups.append((label, [addresses.Resolved(ep.family, ep.sockaddr)
                                   for ep in known.get(label, [])]))
            continue
        found = _literal(hp)
        _refuse_self(listens, label, found)
        groups.append((label, [found]))
    return _assemble(groups, [])


def _literal(hp: addresses.HostPort) -> addresses.Resolved:
    """An IP literal as a socket address (its zone kept; numeric: never a DNS query)."""
    return addresses.resolve(hp)[0]


def _refuse_self(listens: list[tuple[addresses.HostPort, list[addresses.Resolved]]],
                 label: str, candidate: addresses.Resolved) -> None:
    listen = _own_listener(listens, candidate)
    if listen is not None:
        raise ConfigError(
            f"option --endpoints: {label!r} resolves to {candidate}, the "
            f"gateway's own --listen-addr {listen}: it would relay to itself")


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


def _listen_resolved(config: Config) -> Listens:
    """Each TCP listen address with what it binds (a unix socket cannot be dialled)."""
    return [(listen, _bound_by(listen))
            for listen in addresses.tcp_listen_addrs(config.listen_addr)]


def _bound_by(listen: addresses.HostPort) -> list[addresses.Resolved]:
    try:
        return addresses.resolve(listen, passive=True)
    except (OSError, UnicodeError):
        return []


def listens_at_start(config: Config) -> Listens:
    """The TCP listen addresses resolved once, at start (may wait on DNS: no worker
    exists yet); the master keeps them for its reloads."""
    return _listen_resolved(config)


def listens_for_reload(config: Config, known: Listens) -> Listens:
    """A reload's TCP listen addresses without a DNS query on the master's loop (a slow
    resolver would stall checks, watchdog and metrics): an address listened on before
    keeps what it resolved to, an IP literal or a wildcard is parsed, and a host name
    not listened on before is a ConfigError (restart to listen on a new name)."""
    before = dict(known)
    out = []
    for listen in addresses.tcp_listen_addrs(config.listen_addr):
        if listen in before:
            out.append((listen, before[listen]))
            continue
        refuse_new_name("listen-addr", listen)
        out.append((listen, _bound_by(listen)))
    return out


def refuse_new_name(option: str, hp: addresses.HostPort) -> None:
    """ConfigError when a reload brings `hp` with a host name to bind (see
    `listens_for_reload`): the master does not look names up while running."""
    if hp.host not in ("", "::") and is_name(hp):
        raise ConfigError(f"option --{option}: {str(hp)!r} is a host name new to this "
                          "reload, and the master does not look names up while running: "
                          "give an IP address, or restart the gateway")


def _own_listener(listens: list[tuple[addresses.HostPort, list[addresses.Resolved]]],
                  target: addresses.Resolved) -> addresses.HostPort | None:
    """The gateway's own listen address that `target` would reach, if any."""
    for listen, resolved in listens:
        if addresses.listen_addrs_cover(listen, resolved, target):
            return listen
    return None


def resolve_static(config: Config) -> list[Endpoint]:
    """The `--endpoints` list as roster entries, at start; ConfigError names the bad one."""
    listens = _listen_resolved(config)
    groups = []
    for hp in config.endpoints:
        try:
            found = resolve_name(hp)
        except (OSError, UnicodeError) as exc:  # UnicodeError: a DNS label over 63 bytes
            raise ConfigError(f"option --endpoints: cannot resolve {str(hp)!r}: "
                              f"{getattr(exc, 'strerror', None) or exc}") from None
        for candidate in found:
            _refuse_self(listens, str(hp), candidate)
        groups.append((str(hp), found))
    notes: list[str] = []
    endpoints = _assemble(groups, notes)
    for note in notes:
        logger.warning(note)
    return endpoints


def refresh_period(config: Config) -> float | None:
    """Seconds between periodic lookups (SRV records, or --endpoints names), or None
    when there are none (periodic refresh off, or only IP literals)."""
    if config.discovery_srv:
        return config.discovery_srv_refresh or None
    if names(config):
        return config.endpoints_refresh or None
    return None
