"""`etcd-gatewayd status`: ask a running gateway how its endpoints are doing.

design: a plain HTTP client of the gateway's own `--metrics-addr` endpoint (urllib, no
proxies, 5 s timeout): it reads /endpoints and /health and prints one row per endpoint
and a summary line, then (from /certificates) one row per TLS certificate the gateway
has loaded, with its expiry. The address comes from `--metrics-addr`, else from the config
file's `metrics-addr` (`-c FILE`), else from `ETCD_GATEWAY_METRICS_ADDR`. Exit status:
0 when at least one endpoint is up, 1 when none is, the gateway cannot be reached, or
what answered is not a gateway (another HTTP server, something that is not HTTP, JSON
of another shape: checked before anything is printed), 2 for a usage error; errors
are one line on stderr, never a traceback.
"""
from __future__ import annotations

import argparse
import http.client
import json
import os
import sys
import time
import urllib.error
import urllib.request
from typing import Any, Sequence, TextIO

from gateway import addresses
from gateway import config as gwconfig

PROG = "etcd-gatewayd status"
TIMEOUT = 5.0
ENV_VAR = gwconfig.ENV_PREFIX + "METRICS_ADDR"
COLUMNS = ("ENDPOINT", "STATE", "CHECK", "ACTIVE", "CONNECTIONS", "DIAL-FAILS", "CHECK-FAILS",
           "SENT", "RECEIVED", "LAST-CHANGE", "LAST-ERROR")


class UsageError(Exception):
    """Bad or missing address (exit 2)."""


class Unreachable(Exception):
    """Nothing answered at the address (exit 1)."""


class NotAGateway(Exception):
    """Something answered, but not as a gateway's metrics endpoint does (exit 1)."""


def main(argv: list[str], environ: dict[str, str] | None = None,
         out: TextIO | None = None, err: TextIO | None = None) -> int:
    out = sys.stdout if out is None else out
    err = sys.stderr if err is None else err
    env = dict(os.environ if environ is None else environ)
    argv = list(argv)
    if argv and argv[0] == "status":
        argv = argv[1:]
    parser = argparse.ArgumentParser(
        prog=PROG, description="Show the endpoints of a running gateway (needs its "
                               "--metrics-addr).")
    parser.add_argument("--metrics-addr", metavar="HOST:PORT",
                        help=f"the gateway's --metrics-addr [env {ENV_VAR}]")
    parser.add_argument("-c", "--config", metavar="FILE",
                        help="read metrics-addr from this gateway config file")
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # argparse printed the usage
        return 0 if exc.code == 0 else 2
    try:
        base = base_url(resolve_addr(args.metrics_addr, args.config, env))
    except UsageError as exc:
        print(f"{PROG}: {exc}", file=err)
        return 2
    try:
        endpoints = fetch_json(base, "/endpoints")
        health = fetch_json(base, "/health")
        check_shape(endpoints, health)
    except Unreachable as exc:
        print(f"{PROG}: cannot reach the gateway at {base}: {exc}", file=err)
        return 1
    except NotAGateway as exc:
        print(f"{PROG}: reached {base} but it is not an etcd-gatewayd metrics endpoint: "
              f"{exc}", file=err)
        return 1
    print(render_table(endpoints, time.time()), file=out)
    up = sum(1 for e in endpoints if e.get("state") == "up")
    if health.get("draining") is True:
        state = "draining"
    else:
        state = "healthy" if health.get("health") == "true" else "unhealthy"
    print(f"{up} of {len(endpoints)} endpoints up; gateway {state} ({base})", file=out)
    try:
        certificates = fetch_json(base, "/certificates")
    except (Unreachable, NotAGateway):
        certificates = []  # a gateway without the page (older), or a hiccup: no TLS rows
    if isinstance(certificates, list) and certificates:
        print("", file=out)
        print(render_certificates(certificates, time.time()), file=out)
    return 0 if up else 1


def resolve_addr(flag: str | None, config_file: str | None,
                 environ: dict[str, str]) -> addresses.HostPort:
    """The address to ask: flag, else the config file's metrics-addr, else the env."""
    if flag:
        return _parse(flag, "--metrics-addr")
    if config_file:
        try:
            config = gwconfig.load(["-c", config_file], {})
        except gwconfig.ConfigError as exc:
            raise UsageError(str(exc)) from None
        if config.metrics_addr is not None:
            return config.metrics_addr
    text = environ.get(ENV_VAR, "").strip()
    if text:
        return _parse(text, ENV_VAR)
    where = f" and {config_file} sets no metrics-addr" if config_file else ""
    raise UsageError(f"give --metrics-addr HOST:PORT (the gateway's --metrics-addr), "
                     f"-c FILE or {ENV_VAR}{where}")


def _parse(text: str, what: str) -> addresses.HostPort:
    try:
        return addresses.parse_listen_addr(text)
    except ValueError as exc:
        raise UsageError(f"{what}: {exc}") from None


def base_url(addr: addresses.HostPort) -> str:
    """http://host:port, asking loopback when the gateway listens on every interface."""
    host = addr.host
    if host in ("", "0.0.0.0"):
        host = "127.0.0.1"
    elif host == "::":
        host = "::1"
    return f"http://{addresses.join_host_port(host, addr.port)}"


def fetch_json(base: str, path: str) -> Any:
    """GET base+path and decode its JSON body; a 503 from /health is an answer too.
    Unreachable when nothing accepts the connection; NotAGateway (naming `path` and
    why) for anything else that is not a JSON answer: another HTTP status, something
    that is not HTTP, no answer within the timeout, a body that is not JSON."""
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    try:
        with opener.open(base + path, timeout=TIMEOUT) as response:
            body = response.read()
    except urllib.error.HTTPError as exc:
        with exc:
            body = exc.read()
        if exc.code != 503:
            raise NotAGateway(f"{path} answered HTTP {exc.code}") from None
    except urllib.error.URLError as exc:  # the connect (or the request) failed
        raise Unreachable(str(getattr(exc.reason, "strerror", None) or exc.reason)) from None
    except http.client.HTTPException as exc:  # an answer that is not HTTP
        said = f": {str(exc)[:40]!r}" if str(exc) else ""  # repr: one line, whatever it sent
        raise NotAGateway(f"{path}: the answer is not HTTP ({type(exc).__name__}{said})"
                          ) from None
    except OSError as exc:  # connected, then a timeout or a reset
        raise NotAGateway(f"{path}: no HTTP answer within {TIMEOUT:g}s "
                          f"({exc.strerror or type(exc).__name__})") from None
    try:
        return json.loads(body)
    except ValueError:
        raise NotAGateway(f"{path} did not answer JSON") from None


_NUMBERS = ("active_connections", "connections_total", "dial_failures_total",
            "health_check_failures_total", "sent_bytes_total", "received_bytes_total",
            "last_change")


def check_shape(endpoints: Any, health: Any) -> None:
    """NotAGateway unless the answers have the shapes the gateway serves (so the table
    below never meets a value it cannot print)."""
    if not isinstance(health, dict):
        raise NotAGateway("/health did not answer a JSON object")
    if not isinstance(endpoints, list):
        raise NotAGateway("/endpoints did not answer a JSON list")
    for e in endpoints:
        if not isinstance(e, dict):
            raise NotAGateway("/endpoints lists something that is not an endpoint object")
        for key in _NUMBERS:
            value = e.get(key, 0)
            if value is None and key == "last_change":
                continue
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise NotAGateway(f"/endpoints has a non-numeric {key!r}")


# -- formatting ------------------------------------------------------------------------
CERT_COLUMNS = ("CERTIFICATE", "FILE", "SUBJECT", "SERIAL", "EXPIRES")


def human_until(seconds: float) -> str:
    """How long until, coarsely: in 29d, in 3h, EXPIRED."""
    return f"in {_coarse(seconds)}" if seconds > 0 else "EXPIRED"


def _coarse(seconds: float) -> str:
    """A duration in its largest whole unit: 4d, 2h, 3m, 5s."""
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{int(seconds // size)}{unit}"
    return f"{int(seconds)}s"


def _columns(rows: Sequence[Sequence[str]]) -> str:
    """Rows as aligned columns, two spaces apart; the last column is not padded."""
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]) - 1)]
    return "\n".join("  ".join([cell.ljust(w) for cell, w in zip(row, widths)]
                               + [row[-1]]).rstrip() for row in rows)


def render_certificates(certificates: list[dict[str, Any]], now: float) -> str:
    rows = [CERT_COLUMNS]
    for c in certificates:
        not_after = float(c.get("not_after") or 0)
        stamp = time.strftime("%Y-%m-%d %H:%M:%SZ", time.gmtime(not_after))
        rows.append((f"--{c.get('option', '?')}", str(c.get("file", "?")),
                     str(c.get("subject", "")) or "-", str(c.get("serial", "")) or "-",
                     f"{stamp} ({human_until(not_after - now)})"))
    return _columns(rows)


def human_bytes(n: int | float) -> str:
    """1023 B, 1.0 KiB, 1.2 MiB, ..."""
    value = float(n)
    if value < 1024:
        return f"{int(value)} B"
    for unit in ("KiB", "MiB", "GiB", "TiB", "PiB"):
        value /= 1024
        if value < 1024 or unit == "PiB":
            return f"{value:.1f} {unit}"
    return f"{value:.1f} PiB"  # not reached


def human_age(seconds: float) -> str:
    """How long ago, coarsely: 5s ago, 3m ago, 2h ago, 4d ago."""
    return f"{_coarse(max(0.0, seconds))} ago"


def _endpoint_cell(e: dict[str, Any]) -> str:
    """The address, and the name it was resolved from (a label that is not the address)."""
    address, label = str(e.get("endpoint", "?")), str(e.get("label") or "")
    return f"{address} ({label})" if label and label != address else address


def _state_cell(e: dict[str, Any]) -> str:
    """up, down, learner or unchecked, with the alarms the member reports: up,NOSPACE."""
    return ",".join([str(e.get("state", "?")), *map(str, e.get("alarms") or ())])


def render_table(endpoints: list[dict[str, Any]], now: float) -> str:
    rows = [COLUMNS]
    for e in endpoints:
        changed = e.get("last_change") or 0
        rows.append((
            _endpoint_cell(e),
            _state_cell(e),
            str(e.get("check", "?")),
            str(e.get("active_connections", 0)),
            str(e.get("connections_total", 0)),
            str(e.get("dial_failures_total", 0)),
            str(e.get("health_check_failures_total", 0)),
            human_bytes(e.get("sent_bytes_total", 0)),
            human_bytes(e.get("received_bytes_total", 0)),
            human_age(now - changed) if changed else "-",
            str(e.get("last_error") or "-"),
        ))
    return _columns(rows)
