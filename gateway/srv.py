"""DNS SRV discovery: SRV names -> records -> resolved endpoints -> TLS-validated roster.

design: pure functions with bounded waits and no module state except the logger; they
run in the master (at start, on SIGHUP, every --discovery-srv-refresh) or in a
short-lived child of it, never in a worker, and hand back a `Discovery` (JSON-able so
a child can pass it up a pipe). Nothing here raises for DNS or network trouble: every
failure becomes one line of text in the returned error list, and the caller decides
(fail at start, keep the last good set on refresh). Unlike the original:
- both names are always queried; without --insecure-discovery plain-text records are
  reported as ignored (so the operator learns why) and never used;
- SRV targets lose their trailing dot and are resolved (A, then AAAA) with the same
  resolver as the SRV names, so a Consul/dnsmasq-only name works;
- a secure record is kept only after a real TLS handshake with the SRV target as the
  server name (--trusted-ca-file, else the system CAs); the connection is then closed:
  the gateway never terminates TLS, it only checks the member is who DNS says it is.
Every DNS query is bounded by the resolver lifetime (`timeout`) and every TLS check by
`timeout` (connect and handshake together), so `discover` takes at most about
(2 + 2 x distinct targets + secure records) x timeout, sequentially.
"""
from __future__ import annotations

import ipaddress
import json
import select
import socket
import ssl
import time
from dataclasses import asdict, dataclass, field
from typing import Iterable

import dns.exception
import dns.name
import dns.nameserver
import dns.resolver

from gateway import log
from gateway.addresses import HostPort, join_host_port
from gateway.endpoints import Endpoint

_log = log.get("srv")

# Alerts a server sends about *our* (absent) client certificate. The client sends its
# certificate only after it has verified the server's chain and name (TLS 1.2 and 1.3),
# so such an alert means the member passed our check; it just wants a client cert that
# the gateway (which never terminates TLS) does not have. Go's TLS 1.2 server sends
# bad_certificate, TLS 1.3 servers certificate_required (a TLS 1.3 client normally
# finishes its handshake before that alert arrives).
_CLIENT_CERT_ALERTS = frozenset({"SSLV3_ALERT_BAD_CERTIFICATE",
                                 "TLSV13_ALERT_CERTIFICATE_REQUIRED"})


def srv_names(domain: str, name: str = "") -> tuple[str, str]:
    """(secure, plain) SRV names for `domain`, with the optional --discovery-srv-name."""
    domain = domain.strip().rstrip(".")
    suffix = f"-{name}" if name else ""
    return (f"_etcd-client-ssl{suffix}._tcp.{domain}", f"_etcd-client{suffix}._tcp.{domain}")


def make_resolver(servers: tuple[HostPort, ...], timeout: float) -> dns.resolver.Resolver:
    """A resolver for `servers` (IP literals with ports), or the system's
    (/etc/resolv.conf) when empty; each query is bounded by `timeout` in total.

    Raises ValueError for a server that is not an IP address, and
    dns.resolver.NoResolverConfiguration when there are no servers and no usable
    /etc/resolv.conf (`discover` turns both into error text)."""
    if servers:
        resolver = dns.resolver.Resolver(configure=False)
        nameservers = []
        for hp in servers:
            try:
                ip = str(ipaddress.ip_address(hp.host))
            except ValueError:
                raise ValueError(f"DNS server {str(hp)!r} is not an IP address") from None
            nameservers.append(dns.nameserver.Do53Nameserver(ip, hp.port))
        resolver.nameservers = nameservers
        # one try per server may take an equal share, so a dead first server still
        # leaves time for the next one before the lifetime runs out
        resolver.timeout = max(timeout / len(servers), min(timeout, 0.2))
    else:
        resolver = dns.resolver.Resolver()  # /etc/resolv.conf
        resolver.timeout = min(resolver.timeout, timeout)
    resolver.lifetime = timeout
    resolver.cache = None      # every refresh must see the current records
    resolver.search = []       # our names are absolute; never append a search domain
    return resolver


@dataclass(frozen=True)
class SrvRecord:
    target: str     # host name (or IP literal) without the trailing dot
    port: int
    priority: int
    weight: int
    secure: bool    # from the _etcd-client-ssl name

    @property
    def label(self) -> str:
        return join_host_port(self.target, self.port)


@dataclass
class Discovery:
    endpoints: list[Endpoint] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)


def records_from_answer(rdatas: Iterable, secure: bool) -> list[SrvRecord]:
    """SrvRecords from SRV rdata (dnspython objects: .target .port .priority .weight)."""
    out = []
    for rd in rdatas:
        target = (rd.target.to_text() if isinstance(rd.target, dns.name.Name)
                  else str(rd.target)).rstrip(".")  # the root "." becomes ""
        out.append(SrvRecord(target, int(rd.port), int(rd.priority), int(rd.weight), secure))
    return out


def unique_records(records: Iterable[SrvRecord]) -> list[SrvRecord]:
    """First record per (target, port), case-insensitively and ignoring a final dot:
    a member listed under both names is kept once, as the secure record when that
    came first (as `lookup` orders them)."""
    seen: set[tuple[str, int]] = set()
    out = []
    for rec in records:
        key = (rec.target.rstrip(".").lower(), rec.port)
        if key in seen:
            continue
        seen.add(key)
        out.append(rec)
    return out


def _servers_text(resolver: dns.resolver.Resolver) -> str:
    parts = []
    for ns in resolver.nameservers:
        if isinstance(ns, str):
            parts.append(join_host_port(ns, resolver.port))
        else:
            address, port = getattr(ns, "address", None), getattr(ns, "port", None)
            parts.append(join_host_port(address, port) if address and port else str(ns))
    return ",".join(parts) or "none"


def _query_error(what: str, exc: BaseException, resolver: dns.resolver.Resolver) -> str:
    if isinstance(exc, dns.resolver.NXDOMAIN):
        return f"{what}: no such name (NXDOMAIN)"
    if isinstance(exc, dns.resolver.NoAnswer):
        return f"{what}: no records of that type"
    if isinstance(exc, dns.exception.Timeout):
        return (f"{what}: timed out after {resolver.lifetime:g}s "
                f"(DNS servers {_servers_text(resolver)})")
    if isinstance(exc, dns.resolver.NoNameservers):
        # dnspython's text names every server and what it answered (SERVFAIL, REFUSED)
        return f"{what}: {exc}"
    return f"{what}: {type(exc).__name__}: {exc}"


def _query(resolver: dns.resolver.Resolver, qname: str, rdtype: str):
    return resolver.resolve(dns.name.from_text(qname), rdtype, search=False)


def lookup(resolver: dns.resolver.Resolver, domain: str, name: str,
           insecure: bool) -> tuple[list[SrvRecord], list[str]]:
    """SRV records to use (secure first; plain ones only when `insecure`), sorted by
    priority, without duplicates; and one error line per failed or ignored name."""
    secure_name, plain_name = srv_names(domain, name)
    records: list[SrvRecord] = []
    errors: list[str] = []
    secure_timed_out = False
    for qname, secure in ((secure_name, True), (plain_name, False)):
        if not secure and not insecure and secure_timed_out:
            break  # only queried to explain; not worth a second timeout
        try:
            answer = _query(resolver, qname, "SRV")
        except (dns.exception.DNSException, OSError, ValueError) as exc:
            if secure:
                secure_timed_out = isinstance(exc, dns.exception.Timeout)
            if secure or insecure:
                errors.append(_query_error(f"SRV lookup of {qname}", exc, resolver))
            continue
        found = records_from_answer(answer, secure)
        for rec in found:
            if not rec.target:  # RFC 2782: target "." = service decidedly not available
                errors.append(f"SRV lookup of {qname}: target '.' for port {rec.port}: "
                              "service not available there")
        found = [rec for rec in found if rec.target]
        if secure or insecure:
            records.extend(found)
        elif found:
            errors.append(f"ignored {len(found)} plain-text records ({qname}): "
                          "--insecure-discovery not set")
    records = unique_records(records)
    records.sort(key=lambda r: (r.priority, not r.secure, r.target.lower(), r.port))
    return records, errors


def _resolve_one(resolver: dns.resolver.Resolver, target: str) -> tuple[str, int] | str:
    """(ip, family) for `target`, or error text. A then AAAA; lowest address first."""
    try:
        ip = ipaddress.ip_address(target)
        return str(ip), socket.AF_INET6 if ip.version == 6 else socket.AF_INET
    except ValueError:
        pass
    what = f"resolve SRV target {target}"
    last: BaseException | None = None
    for rdtype, family in (("A", socket.AF_INET), ("AAAA", socket.AF_INET6)):
        try:
            answer = _query(resolver, target, rdtype)
        except dns.resolver.NoAnswer as exc:
            last = exc
            continue  # no A: try AAAA
        except (dns.exception.DNSException, OSError, ValueError) as exc:
            return _query_error(what, exc, resolver)
        ips = sorted((ipaddress.ip_address(rd.address) for rd in answer))
        if ips:
            return str(ips[0]), family
    return f"{what}: no A or AAAA records" if last is not None else f"{what}: no address"


def _resolve_pairs(resolver: dns.resolver.Resolver, records: Iterable[SrvRecord]
                   ) -> tuple[list[tuple[SrvRecord, Endpoint]], list[str]]:
    cache: dict[str, tuple[str, int] | str] = {}
    pairs: list[tuple[SrvRecord, Endpoint]] = []
    errors: list[str] = []
    seen: set[tuple[str, int]] = set()
    for rec in records:
        key = rec.target.lower()
        if key not in cache:
            cache[key] = _resolve_one(resolver, rec.target)
        got = cache[key]
        if isinstance(got, str):
            if got not in errors:
                errors.append(got)
            continue
        ip, family = got
        if (ip, rec.port) in seen:
            continue  # two names for one member: keep the first (secure, lower priority)
        seen.add((ip, rec.port))
        pairs.append((rec, Endpoint(rec.label, family, ip, rec.port,
                                    rec.priority, rec.weight)))
    return pairs, errors


def _wait(sock: socket.socket, write: bool, deadline: float) -> bool:
    remaining = deadline - time.monotonic()
    if remaining <= 0:
        return False
    r, w, _ = select.select([] if write else [sock], [sock] if write else [], [], remaining)
    return bool(r or w)


def validate_tls(endpoint: Endpoint, server_name: str, ca_file: str,
                 timeout: float) -> str | None:
    """None if a TLS handshake with `endpoint` verifies the certificate chain (against
    `ca_file`, else the system CAs) and `server_name`; else one line of error text.
    Connect and handshake together take at most `timeout`; the connection is closed."""
    what = f"TLS check of {join_host_port(server_name, endpoint.port)} at {endpoint.address}"
    try:
        ctx = ssl.create_default_context(cafile=ca_file or None)
    except (OSError, ssl.SSLError) as exc:
        return f"{what}: cannot load --trusted-ca-file {ca_file!r}: {exc}"
    ctx.check_hostname = True
    deadline = time.monotonic() + timeout
    sock = socket.socket(endpoint.family, socket.SOCK_STREAM)
    tls: ssl.SSLSocket | None = None
    try:
        sock.settimeout(timeout)
        sock.connect(endpoint.sockaddr)
        sock.setblocking(False)
        tls = ctx.wrap_socket(sock, server_hostname=server_name,
                              do_handshake_on_connect=False)
        while True:
            try:
                tls.do_handshake()
                return None
            except ssl.SSLWantReadError:
                ready = _wait(tls, False, deadline)
            except ssl.SSLWantWriteError:
                ready = _wait(tls, True, deadline)
            if not ready:
                return f"{what}: handshake timed out after {timeout:g}s"
    except ssl.SSLCertVerificationError as exc:
        return f"{what}: certificate verify failed: {exc.verify_message or exc.reason}"
    except ssl.SSLError as exc:
        if exc.reason in _CLIENT_CERT_ALERTS:
            return None  # the member passed our checks and then asked for a client cert
        return f"{what}: handshake failed: {exc.reason or exc}"
    except (socket.timeout, TimeoutError):
        return f"{what}: connect timed out after {timeout:g}s"
    except ConnectionRefusedError:
        return f"{what}: connection refused"
    except OSError as exc:
        return f"{what}: {exc.strerror or exc}"
    finally:
        (tls or sock).close()


def discover(domain: str, name: str, insecure: bool, ca_file: str,
             resolver_servers: tuple[HostPort, ...], timeout: float) -> Discovery:
    """The roster from SRV records. Without `insecure` only -ssl records are used and
    each must pass `validate_tls`; with it every record is used as it is. Never raises
    for DNS/network trouble; an empty `endpoints` list comes with the reasons."""
    result = Discovery()
    try:
        resolver = make_resolver(resolver_servers, timeout)
    except (ValueError, dns.exception.DNSException, OSError) as exc:
        result.errors.append(f"DNS resolver for --discovery-srv: {exc}")
        return result
    records, errors = lookup(resolver, domain, name, insecure)
    result.errors.extend(errors)
    pairs, errors = _resolve_pairs(resolver, records)
    result.errors.extend(errors)
    if pairs:
        _log.info("discovered cluster from SRV", extra=log.fields(**{
            "srv-server": domain, "endpoints": [ep.label for _, ep in pairs]}))
    if insecure:
        result.endpoints = [ep for _, ep in pairs]
        return result
    for rec, ep in pairs:
        if not rec.secure:  # lookup never returns these without insecure; be sure
            continue
        error = validate_tls(ep, rec.target, ca_file, timeout)
        if error is None:
            result.endpoints.append(ep)
        else:
            result.errors.append(error)
            _log.warning("failed to validate discovered endpoints", extra=log.fields(**{
                "srv-server": domain, "errors": [error]}))
    if result.endpoints:
        _log.info("using validated discovered SRV endpoints", extra=log.fields(
            endpoints=[ep.label for ep in result.endpoints]))
    return result


def to_json(discovery: Discovery) -> str:
    return json.dumps({"endpoints": [asdict(ep) for ep in discovery.endpoints],
                       "errors": list(discovery.errors)})


def from_json(text: str) -> Discovery:
    data = json.loads(text)
    return Discovery([Endpoint(**ep) for ep in data.get("endpoints", [])],
                     [str(e) for e in data.get("errors", [])])
