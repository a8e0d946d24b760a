"""The one declarative table of options, and the frozen Config built from it.

design: each option is declared once (`OPTIONS`); the command-line parser, the config
file keys, the `ETCD_GATEWAY_*` environment variables, `conf/gateway.conf`, `--help` and
the README's flag table all come from it. The command line is argparse's; the
environment and the config file (gateway/configfile.py: read once, strictly) are read
here. Precedence: command line > environment > config file > defaults; a repeatable
option takes its value from one source only (all of its file lines, or the
environment, or its flags). Control characters are refused in every value, from any
source. Loading never exits and never logs: every problem
is a `ConfigError` with one line naming the option and the value, so the CLI can exit 2
and a reload can keep the old config.
"""
from __future__ import annotations

import argparse
import ipaddress
import os
import re
from dataclasses import dataclass, field
from typing import Any, Callable


from gateway import addresses, allowlist, configfile, keepalive, listeners
from gateway import log as gwlog
from gateway.endpoints import MAX_ENDPOINTS, MAX_WORKERS
from gateway.durations import format_duration, parse_duration

ENV_PREFIX = "ETCD_GATEWAY_"


class ConfigError(Exception):
    """A bad option value or config file; the message is one line, fit for an operator."""


# -- value parsers: str -> value, ValueError with a short reason -------------------
def _duration(text: str) -> float:
    seconds = parse_duration(text)
    if seconds <= 0:
        raise ValueError("must be positive")
    return seconds


def _duration_or_zero(text: str) -> float:
    seconds = parse_duration(text)
    if seconds < 0:
        raise ValueError("must not be negative")
    return seconds


BUSY_POLL_MAX = 0.001  # seconds: a longer spin only burns more CPU per event


def _busy_poll(text: str) -> float:
    seconds = parse_duration(text)
    if seconds < 0:
        raise ValueError("must not be negative")
    if seconds > BUSY_POLL_MAX:
        raise ValueError("at most 1ms (a worker spins this long after each busy turn)")
    return seconds


def _keepalive(text: str) -> float:
    return keepalive.parse_seconds(parse_duration(text))


def _bool(text: str | bool) -> bool:
    if isinstance(text, bool):
        return text
    value = text.strip().lower()
    if value in ("1", "t", "true", "yes", "on"):
        return True
    if value in ("0", "f", "false", "no", "off"):
        return False
    raise ValueError("want true or false")




def _workers(text: str) -> int:
    if not text.strip().isdigit():
        raise ValueError("want a whole number of worker processes")
    value = int(text)
    if not 1 <= value <= MAX_WORKERS:
        raise ValueError(f"want 1 to {MAX_WORKERS}")
    return value


def _count(text: str) -> int:
    if not text.strip().isdigit() or not 1 <= int(text) <= 100:
        raise ValueError("want a whole number from 1 to 100")
    return int(text)


MAX_CONNECTIONS_LIMIT = 1 << 31


def _max_connections(text: str) -> int:
    if not text.strip().isdigit() or int(text) >= MAX_CONNECTIONS_LIMIT:
        raise ValueError(f"want a whole number of connections below {MAX_CONNECTIONS_LIMIT} "
                         "(0: no limit)")
    return int(text)


def _optional_listen_addr(text: str) -> addresses.HostPort | None:
    return addresses.parse_listen_addr(text) if text.strip() else None


def _choice(*choices: str) -> Callable[[str], str]:
    def parse(text: str) -> str:
        value = text.strip().lower()
        if value not in choices:
            raise ValueError("want one of " + ", ".join(choices))
        return value
    return parse


def _text(text: str) -> str:
    return text.strip()


_DNS_LABEL = re.compile(r"[A-Za-z0-9_]([A-Za-z0-9_-]{0,61}[A-Za-z0-9_])?")
DNS_NAME_MAX = 253   # bytes of a name written without its final dot
SRV_PREFIX = "_etcd-client-ssl"  # the longer of the two SRV service labels
SRV_PROTO = "._tcp."


def _dns_labels(name: str) -> None:
    """ValueError unless `name` is dot-separated labels of 1 to 63 letters, digits,
    hyphens or underscores, none starting or ending with a hyphen."""
    for label in name.split("."):
        if not label:
            raise ValueError("not a DNS name: an empty label (two dots, or a dot first)")
        if len(label) > 63:
            raise ValueError(f"not a DNS name: label {label[:20]!r}... is longer than 63 "
                             "characters")
        if not _DNS_LABEL.fullmatch(label):
            raise ValueError(f"not a DNS name: {label!r} is not a label (letters, digits, "
                             "'-' and '_'; no '-' at either end)")


def _dns_domain(text: str) -> str:
    """A DNS domain (a final dot is allowed), checked as a name before any lookup."""
    name = text.strip()
    if not name:
        return ""
    bare = name[:-1] if name.endswith(".") else name
    if len(bare) > DNS_NAME_MAX:
        raise ValueError(f"not a DNS name: more than {DNS_NAME_MAX} characters")
    _dns_labels(bare)
    return name


def _srv_service_name(text: str) -> str:
    """NAME of _etcd-client-ssl-NAME._tcp: what it adds must keep the labels valid."""
    name = text.strip()
    if name:
        _dns_labels(f"{SRV_PREFIX}-{name}")
    return name


def _listen_addrs(values: list[str]) -> tuple[addresses.ListenAddr, ...]:
    return tuple(addresses.parse_listen_list(values))


def _socket_mode(text: str) -> str:
    """Octal permission bits of a unix socket file, e.g. 0660; kept as written (octal)."""
    value = text.strip().lower().removeprefix("0o")
    if not value or any(c not in "01234567" for c in value) or int(value, 8) > 0o777:
        raise ValueError("want octal permission bits, e.g. 0660")
    return f"0{int(value, 8):03o}"


def _socket_group(text: str) -> str:
    """A group name or number that exists (empty: the gateway's own group)."""
    value = text.strip()
    if value:
        listeners.group_id(value)
    return value


def _endpoint_list(values: list[str]) -> list[addresses.HostPort]:
    return addresses.parse_endpoint_list(values)


def _resolver_list(text: str) -> tuple[addresses.HostPort, ...]:
    """DNS servers as HOST[:PORT],...; port 53 when omitted; empty = /etc/resolv.conf."""
    out = []
    for item in text.split(","):
        item = item.strip()
        if not item:
            continue
        hp = addresses.parse_endpoint(item)
        try:
            ipaddress.ip_address(hp.host)
        except ValueError:
            raise ValueError(f"{hp.host!r} is not an IP address (a DNS server is given "
                             "by address, e.g. 127.0.0.1:8600)") from None
        if ":" not in item.rsplit("]", 1)[-1]:
            hp = addresses.HostPort(hp.host, 53)
        out.append(hp)
    return tuple(out)


def _default_workers() -> str:
    try:
        return str(len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):
        return str(os.cpu_count() or 1)


@dataclass(frozen=True)
class Option:
    name: str                      # long flag without dashes; also the config-file key
    parse: Callable[[Any], Any]
    default: str | Callable[[], str]
    help: str
    origin: str = "etcd"           # "etcd": the original's flag; "new": ours
    repeatable: bool = False       # may be given several times; values are joined
    boolean: bool = False          # `--flag` alone means true
    metavar: str = ""

    @property
    def dest(self) -> str:
        return self.name.replace("-", "_")

    @property
    def env(self) -> str:
        return ENV_PREFIX + self.name.upper().replace("-", "_")

    def default_text(self) -> str:
        return self.default() if callable(self.default) else self.default


OPTIONS: tuple[Option, ...] = (
    Option("listen-addr", _listen_addrs, "127.0.0.1:23790",
           "Addresses to listen on, comma-separated, repeatable: host:port, [v6]:port, "
           ":port for every interface, or unix:///path for a unix socket.",
           repeatable=True, metavar="ADDR,..."),
    Option("allow-from", allowlist.parse, "",
           "Client networks a TCP listener lets in, CIDRs comma-separated, repeatable "
           "(default: everyone); others are closed at accept, before any member is "
           "dialled. An IPv4-mapped IPv6 client matches the IPv4 rules. Not applied to "
           "unix sockets.", origin="new", repeatable=True, metavar="CIDR,..."),
    Option("listen-socket-mode", _socket_mode, "0660",
           "Permission bits of unix socket files (octal): who may connect.",
           origin="new", metavar="MODE"),
    Option("listen-socket-group", _socket_group, "",
           "Group (name or number) of unix socket files (default: the gateway's group).",
           origin="new", metavar="GROUP"),
    Option("endpoints", _endpoint_list, "127.0.0.1:2379",
           "etcd members to relay to: comma-separated, repeatable; host[:port], port "
           "2379 when omitted; IPv6 as [::1]:2379. https://host:port: dialled with TLS "
           "(see --cacert, --cert, --key); no scheme or http://: relayed as TCP, so TLS "
           "from clients passes through. https and plain cannot be mixed.",
           repeatable=True, metavar="HOST:PORT,..."),
    Option("discovery-srv", _dns_domain, "",
           "DNS domain whose SRV records list the members (replaces --endpoints).",
           metavar="DOMAIN"),
    Option("discovery-srv-name", _srv_service_name, "",
           "Suffix of the SRV names: _etcd-client-ssl-NAME._tcp.DOMAIN.", metavar="NAME"),
    Option("insecure-discovery", _bool, "false",
           "Accept SRV records for plain-text members (_etcd-client._tcp).", boolean=True),
    Option("trusted-ca-file", _text, "",
           "CA bundle that validates the members found by SRV discovery.", metavar="FILE"),
    Option("discovery-srv-tls", _bool, "false",
           "Dial the members found under _etcd-client-ssl with TLS (origination, with "
           "--cacert, --cert, --key) instead of passing clients' TLS through.",
           origin="new", boolean=True),
    Option("discovery-srv-resolver", _resolver_list, "",
           "DNS servers to query for SRV records, HOST[:PORT],... (port 53 when omitted; "
           "default: /etc/resolv.conf), e.g. a Consul agent at 127.0.0.1:8600.",
           origin="new", metavar="HOST[:PORT],..."),
    Option("discovery-srv-refresh", _duration_or_zero, "30s",
           "How often SRV records are queried again (0 turns periodic refresh off; "
           "SIGHUP always re-queries).", origin="new", metavar="DURATION"),
    Option("endpoints-refresh", _duration_or_zero, "5s",
           "How often host names in --endpoints are resolved again, so new connections "
           "follow a changed address (0 turns periodic re-resolution off; SIGHUP and a "
           "failed member reached by name always re-resolve). IP addresses never are.",
           origin="new", metavar="DURATION"),
    Option("retry-delay", _duration, "1m0s",
           "How long an endpoint stays out after a failure before it is probed again.",
           metavar="DURATION"),
    Option("dial-timeout", _duration, "1s",
           "Bound on each connect to a member. A refused connect marks the member down at "
           "once; a timed-out one moves the client to the next member, and marks it down "
           "only after --health-check-fall of them in a row with no successful dial "
           "between (or when a health check agrees).", origin="new", metavar="DURATION"),
    Option("dial-total-timeout", _duration, "10s",
           "How long a client may wait for a member in all: when every member's dial "
           "timed out (busy: a full accept queue drops SYNs), the members are dialled "
           "again, round after round, until this bound; then the client is closed. "
           "Refused members are not waited for.", origin="new", metavar="DURATION"),
    Option("workers", _workers, _default_workers,
           "Worker processes that accept and relay (default: CPUs available).",
           origin="new", metavar="N"),
    Option("worker-timeout", _duration_or_zero, "30s",
           "A worker whose loop shows no progress for this long (stopped, spinning, "
           "blocked) is killed with SIGKILL and replaced (0 turns the watchdog off).",
           origin="new", metavar="DURATION"),
    Option("keepalive", _keepalive, "15s",
           "TCP keepalive on both legs: idle time before the first probe and between "
           "probes, 9 probes (a vanished peer is dropped after 10x this: 2m30s at 15s, "
           "the Go original's cadence); 0 = the kernel's defaults.", origin="new",
           metavar="DURATION"),
    Option("idle-timeout", _duration_or_zero, "0s",
           "Close a session that moved no byte in either direction for this long "
           "(0 = never; checked every half second).", origin="new", metavar="DURATION"),
    Option("busy-poll", _busy_poll, "50us",
           "The longest a worker polls without sleeping after a turn that handled "
           "events, before it sleeps (0 = never; at most 1ms). Adaptive, as KVM's "
           "halt-polling: the spin grows (from 10us, doubling) while events come "
           "within this long of the last turn, and stops at once when one does not; "
           "an empty poll yields the CPU to any process ready to run on it. Saves the "
           "wake-up of the next event on a connection that answers fast (one client "
           "doing requests in sequence: about twice the requests per second here), "
           "for CPU that would otherwise be idle. HAProxy's busy-polling, which is "
           "not adaptive and off by default.", origin="new", metavar="DURATION"),
    Option("shutdown-timeout", _duration, "30s",
           "On SIGTERM/SIGINT, how long open connections may drain before they are closed.",
           origin="new", metavar="DURATION"),
    Option("health-check", _choice("auto", "none", "tcp", "etcd"), "auto",
           "Active member checks: auto (etcd's status where the member speaks plain "
           "HTTP, else tcp); none; tcp (a connect); etcd (the status, and GET /health "
           "must answer 200 with \"health\":\"true\"). Learners never get a client "
           "(see Member health).", origin="new", metavar="MODE"),
    Option("health-check-interval", _duration, "5s",
           "How often every member is checked.", origin="new", metavar="DURATION"),
    Option("health-check-fall", _count, "2",
           "Consecutive failed checks, or timed-out dials with no successful dial between, "
           "that mark a member down.", origin="new", metavar="N"),
    Option("health-check-rise", _count, "2",
           "Consecutive good checks that readmit a member (after its retry delay).",
           origin="new", metavar="N"),
    Option("max-connections", _max_connections, "0",
           "Client connections held across all workers (dialling or relayed) beyond "
           "which the gateway stops accepting and lets the kernel's backlog hold new "
           "clients until connections close (HAProxy's maxconn; 0: no limit).",
           origin="new", metavar="N"),
    Option("balance", _choice("round-robin", "least-connections"), "round-robin",
           "How new clients are spread over the healthy members: round-robin, or "
           "least-connections (the fewest relayed connections across all workers, "
           "round robin among ties; with SRV, inside the RFC 2782 priority class, "
           "relative to weight).", origin="new", metavar="POLICY"),
    Option("metrics-addr", _optional_listen_addr, "",
           "Serve /metrics (Prometheus), /health and /endpoints over HTTP here "
           "(default: off).", origin="new", metavar="HOST:PORT"),
    Option("cacert", _text, "",
           "CA bundle that verifies members dialled with TLS (default: --trusted-ca-file, "
           "else the system's CA store).", origin="new", metavar="FILE"),
    Option("cert", _text, "",
           "Client certificate the gateway presents to members dialled with TLS.",
           origin="new", metavar="FILE"),
    Option("key", _text, "",
           "Private key of --cert.", origin="new", metavar="FILE"),
    Option("cert-file", _text, "",
           "Serving certificate: the listener speaks TLS to clients (termination).",
           origin="new", metavar="FILE"),
    Option("key-file", _text, "",
           "Private key of --cert-file.", origin="new", metavar="FILE"),
    Option("client-cert-auth", _bool, "false",
           "Require clients to present a certificate signed by --client-ca-file.",
           origin="new", boolean=True),
    Option("client-ca-file", _text, "",
           "CA bundle that verifies client certificates (with --client-cert-auth).",
           origin="new", metavar="FILE"),
    Option("tls-reload-interval", _duration_or_zero, "10s",
           "How often certificate, key and CA files are checked for changes and re-read "
           "(0: only on SIGHUP).", origin="new", metavar="DURATION"),
    Option("log-level", _choice("debug", "info", "warn", "error"), "info",
           "Least severe level logged: debug, info, warn or error.", origin="new",
           metavar="LEVEL"),
    Option("log-format", _choice("json", "console"), "json",
           "json (etcd's keys: level, ts, caller, msg, fields) or console.", origin="new",
           metavar="FORMAT"),
    Option("log-file", _text, "",
           "Append logs to this file instead of stderr.", origin="new", metavar="FILE"),
)
OPTIONS_BY_NAME = {opt.name: opt for opt in OPTIONS}


@dataclass(frozen=True)
class Config:
    listen_addr: tuple[addresses.ListenAddr, ...]
    listen_socket_mode: str
    allow_from: allowlist.AllowList
    listen_socket_group: str
    endpoints: tuple[addresses.HostPort, ...]
    discovery_srv: str
    discovery_srv_name: str
    insecure_discovery: bool
    trusted_ca_file: str
    discovery_srv_tls: bool
    discovery_srv_resolver: tuple[addresses.HostPort, ...]
    discovery_srv_refresh: float
    endpoints_refresh: float
    retry_delay: float
    dial_timeout: float
    dial_total_timeout: float
    workers: int
    worker_timeout: float
    keepalive: float
    idle_timeout: float
    busy_poll: float
    shutdown_timeout: float
    health_check: str
    health_check_interval: float
    health_check_fall: int
    health_check_rise: int
    max_connections: int
    balance: str
    metrics_addr: addresses.HostPort | None
    cacert: str
    cert: str
    key: str
    cert_file: str
    key_file: str
    client_cert_auth: bool
    client_ca_file: str
    tls_reload_interval: float
    log_level: str
    log_format: str
    log_file: str
    config_file: str | None = None
    config_text: configfile.ConfigText | None = field(default=None, compare=False, repr=False)
    sources: dict[str, str] = field(default_factory=dict, compare=False)

    @property
    def log_settings(self) -> gwlog.Settings:
        """--log-level, --log-format and --log-file as the one value logging takes."""
        return gwlog.Settings(self.log_level, self.log_format, self.log_file)

    def describe(self, name: str) -> str:
        """The effective value of option `name`, written as it would be given."""
        value = getattr(self, name.replace("-", "_"))
        if isinstance(value, float):
            return format_duration(value)
        if isinstance(value, bool):
            return "true" if value else "false"
        if isinstance(value, tuple):
            return ",".join(str(v) for v in value)
        if value is None:
            return ""
        return str(value)


class _Parser(argparse.ArgumentParser):
    """argparse that raises instead of exiting, so a reload can survive."""

    def error(self, message: str):  # type: ignore[override]
        raise ConfigError(message)

    def exit(self, status: int = 0, message: str | None = None):  # type: ignore[override]
        raise ConfigError(message or f"exit {status}")


def build_parser() -> argparse.ArgumentParser:
    """The command line only: the environment and the config file are read by `load`."""
    parser = _Parser(
        prog="etcd-gatewayd",
        description="A pre-fork, zero-copy TCP gateway in front of an etcd cluster.",
        epilog="Precedence: command line > ETCD_GATEWAY_* environment > config file > "
               "defaults. Durations use Go's syntax (500ms, 5s, 1m0s).",
    )
    parser.add_argument("-c", "--config", action="append", metavar="FILE",
                        help=CONFIG_HELP)
    for opt in OPTIONS:
        help_text = f"{opt.help} [default: {opt.default_text() or 'none'}; env {opt.env}]"
        kwargs: dict[str, Any] = {"help": help_text.replace("%", "%%"), "dest": opt.dest}
        if opt.metavar:
            kwargs["metavar"] = opt.metavar
        if opt.repeatable:
            kwargs.update(action="append", default=None)
        elif opt.boolean:
            kwargs.update(nargs="?", const="true", default=None, metavar="true|false")
        else:
            kwargs["default"] = None
        parser.add_argument("--" + opt.name, **kwargs)
    parser.add_argument("--check-config", action="store_true",
                        help="Validate the configuration as start would (short of binding), "
                             "print each effective value and where it came from, and exit "
                             "(0 valid; otherwise the status start would exit with).")
    parser.add_argument("--version", action="store_true", help="Print the version and exit.")
    return parser


CONFIG_HELP = ("Config file: one `option = value` per line, keys are the long flag names; "
               "a file, a pipe or /dev/fd/N, read once (at most 1 MiB); one -c at most.")


def strip_start_word(argv: list[str]) -> list[str]:
    """`etcd-gatewayd start --endpoints=...` works as `etcd gateway start ...` did."""
    if argv and argv[0] == "start":
        return argv[1:]
    return argv


def load(argv: list[str], environ: dict[str, str] | None = None,
         earlier: configfile.ConfigText | None = None) -> Config:
    """Parse and validate; raise ConfigError (one line) on any problem. `earlier` is
    the config file as read at start: a pipe cannot be read again, so a reload of a
    configuration read from a pipe reuses those bytes."""
    environ = dict(os.environ if environ is None else environ)
    argv = strip_start_word(list(argv))
    ns, extra = build_parser().parse_known_args(argv)
    if extra:
        raise ConfigError(f"unknown argument {extra[0]!r}")
    text = _read_config_file(ns.config, earlier)
    try:
        in_file = configfile.parse(text, set(OPTIONS_BY_NAME),
                                   {o.name for o in OPTIONS if o.repeatable}) if text else {}
    except configfile.ConfigFileError as exc:
        raise ConfigError(str(exc)) from None
    sources: dict[str, str] = {}
    values: dict[str, Any] = {}
    for opt in OPTIONS:
        raw, source = _given(opt, ns, environ, in_file, text)
        if raw is None:
            raw = [opt.default_text()] if opt.repeatable else opt.default_text()
        else:
            sources[opt.name] = source
        shown = ",".join(raw) if isinstance(raw, list) else raw
        bad = configfile.CONTROL.search(shown)
        if bad is not None:
            raise ConfigError(f"option --{opt.name}: invalid value {shown!r}: control "
                              f"character U+{ord(bad.group()):04X} not allowed"
                              f"{_where(source)}")
        try:
            values[opt.dest] = opt.parse(raw)
        except ValueError as exc:
            raise ConfigError(f"option --{opt.name}: invalid value {shown!r}: {exc}"
                              f"{_where(sources.get(opt.name))}") from None
    if not values["endpoints"] and not values["discovery_srv"]:
        raise ConfigError("option --endpoints: no endpoints given (want host:port,...)")
    if values["discovery_srv_name"] and not values["discovery_srv"]:
        raise ConfigError(f"option --discovery-srv-name: {values['discovery_srv_name']!r} "
                          "needs --discovery-srv")
    _check_srv_name_length(values["discovery_srv"], values["discovery_srv_name"])
    if values["discovery_srv_tls"] and not values["discovery_srv"]:
        raise ConfigError("option --discovery-srv-tls: needs --discovery-srv")
    if values["discovery_srv_tls"] and values["insecure_discovery"]:
        raise ConfigError("option --discovery-srv-tls: cannot be combined with "
                          "--insecure-discovery (plain and TLS members would be mixed)")
    if len(values["endpoints"]) > MAX_ENDPOINTS:
        raise ConfigError(f"option --endpoints: {len(values['endpoints'])} endpoints given; "
                          f"at most {MAX_ENDPOINTS}")
    values["endpoints"] = tuple(values["endpoints"])
    return Config(config_file=text.path if text else None, config_text=text,
                  sources=sources, **values)


def _check_srv_name_length(domain: str, name: str) -> None:
    """The longest SRV name queried must still be a DNS name (at most 253 characters)."""
    if not domain:
        return
    full = f"{SRV_PREFIX}{'-' + name if name else ''}{SRV_PROTO}{domain.rstrip('.')}"
    if len(full) > DNS_NAME_MAX:
        option, value = ("discovery-srv-name", name) if name else ("discovery-srv", domain)
        raise ConfigError(f"option --{option}: invalid value {value!r}: the SRV name "
                          f"{full[:40]}... would be {len(full)} characters; a DNS name has "
                          f"at most {DNS_NAME_MAX}")



def _read_config_file(paths: list[str] | None, earlier: configfile.ConfigText | None
                      ) -> configfile.ConfigText | None:
    """The one config file, read once (or reused, for a pipe read at start)."""
    if not paths:
        return None
    if len(paths) > 1:
        raise ConfigError(f"option --config: given {len(paths)} times "
                          f"({', '.join(repr(p) for p in paths)}); give one file")
    path = paths[0]
    if earlier is not None and earlier.path == path and not earlier.rereadable:
        return earlier
    try:
        return configfile.read(path)
    except configfile.ConfigFileError as exc:
        raise ConfigError(str(exc)) from None


def _given(opt: Option, ns: argparse.Namespace, environ: dict[str, str],
           in_file: dict[str, list[configfile.Setting]],
           text: configfile.ConfigText | None) -> tuple[Any, str]:
    """(raw value, where it came from) by precedence: flag, environment, file; (None,
    "") when the option was not given. A repeatable option takes all of its file lines."""
    flag = getattr(ns, opt.dest)
    if flag is not None:
        return flag, "flag"
    if opt.env in environ:
        value = environ[opt.env]
        return ([value] if opt.repeatable else value), f"environment ({opt.env})"
    settings = in_file.get(opt.name)
    if settings and text is not None:
        lines = ", ".join(str(s.line) for s in settings)
        where = f"file ({text.path} line{'s' if len(settings) > 1 else ''} {lines})"
        if opt.repeatable:
            return [s.value for s in settings], where
        return settings[0].value, where
    return None, ""


def check_log_file(path: str) -> None:
    """`--log-file` can be opened for appending, as start and reload open it (it is
    created if missing, as they would); ConfigError otherwise. Empty = stderr."""
    if not path:
        return
    try:
        with open(path, "a", encoding="utf-8"):
            pass
    except OSError as exc:
        raise ConfigError(
            f"option --log-file: cannot open {path!r}: {exc.strerror}") from None


def _where(source: str | None) -> str:
    return f" (from {source})" if source and source != "flag" else ""


def option_names() -> list[str]:
    return [opt.name for opt in OPTIONS]
