"""Command line entry point: `etcd-gatewayd [start] [options]`.

design: the start path first installs start-up's signal handlers (earlysignals.py:
nothing sent during start-up is fatal, a stop signal ends it cleanly), then parses
and validates (a bad value is one line on stderr and exit status 2, never a
traceback), then sets up logging and hands over to the master. Start-up failures
that are not bad values (the port is taken, a fork fails) exit 1 with one line.
"""
from __future__ import annotations

import os
import sys

from gateway import __version__, earlysignals
from gateway import config as gwconfig
from gateway import log as gwlog
from gateway.addresses import HostPort, resolve, tcp_listen_addrs

PROG = "etcd-gatewayd"


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["status"]:
        from gateway import status
        return status.main(argv[1:])
    args = gwconfig.strip_start_word(argv)
    if any(a in ("-h", "--help") for a in args):
        gwconfig.build_parser().print_help()
        return 0
    if "--version" in args:
        print(f"{PROG} {__version__}")
        return 0
    environ = dict(os.environ)
    if "--check-config" in args:
        try:
            config = gwconfig.load(argv, environ)
        except gwconfig.ConfigError as exc:
            print(f"{PROG}: {exc}", file=sys.stderr)
            return 2
        return check_config(config)
    early = earlysignals.install()  # before anything slow: see earlysignals.py
    try:
        return start(argv, environ, early)
    except earlysignals.StartupInterrupted as exc:
        if gwlog.get().handlers:
            gwlog.get("master").info("stopped during start-up",
                                     extra=gwlog.fields(signal=str(exc), status=0))
        else:
            print(f"{PROG}: stopped during start-up ({exc})", file=sys.stderr)
        return 0


def start(argv: list[str], environ: dict[str, str], early: earlysignals.EarlySignals) -> int:
    """Load, set up logging, run the master; the exit status."""
    try:
        config = gwconfig.load(argv, environ)
    except gwconfig.ConfigError as exc:
        print(f"{PROG}: {exc}", file=sys.stderr)
        return 2
    try:
        gwlog.setup(config.log_settings)
    except OSError as exc:
        print(f"{PROG}: option --log-file: cannot open {config.log_file!r}: {exc.strerror}",
              file=sys.stderr)
        return 2
    from gateway.arbiter import Arbiter, FatalError  # after validation: keep errors fast

    try:
        return Arbiter(config, argv, environ, early_signals=early).run()
    except gwconfig.ConfigError as exc:
        print(f"{PROG}: {exc}", file=sys.stderr)
        return 2
    except FatalError as exc:
        print(f"{PROG}: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


def check_config(config: gwconfig.Config) -> int:
    """Every check start makes, short of binding: the log file opens, the listen and
    metrics addresses resolve, the endpoints resolve (or SRV discovery finds members).
    Prints the effective configuration and each value's source; exits with the status
    start would exit with (2 a bad value, 1 nothing usable discovered or an address
    that does not resolve), 0 when start would get as far as binding."""
    from gateway import discovery
    from gateway import tls as gwtls

    try:
        gwconfig.check_log_file(config.log_file)
        gwtls.load(gwtls.options_from(config))
        endpoints = discovery.resolve(config).endpoints
    except gwconfig.ConfigError as exc:
        print(f"{PROG}: {exc}", file=sys.stderr)
        return 2
    except discovery.DiscoveryError as exc:
        print(f"{PROG}: {exc}", file=sys.stderr)
        return 1
    for option, addr in [*(("--listen-addr", a) for a in tcp_listen_addrs(config.listen_addr)),
                         ("--metrics-addr", config.metrics_addr)]:
        problem = _unresolvable(addr)
        if problem:
            print(f"{PROG}: option {option}: cannot resolve {addr}: {problem}",
                  file=sys.stderr)
            return 1
    rows = [(name, config.describe(name), config.sources.get(name, "default"))
            for name in gwconfig.option_names()]
    if config.config_file:
        rows.insert(0, ("config", config.config_file, "flag"))
    width = [max(len(r[i]) for r in rows + [("option", "value", "source")]) for i in range(2)]
    print(f"{'option':<{width[0]}}  {'value':<{width[1]}}  source")
    for name, value, source in rows:
        print(f"{name:<{width[0]}}  {value:<{width[1]}}  {source}")
    print(f"resolved endpoints: {', '.join(ep.address for ep in endpoints)}")
    print("configuration is valid")
    return 0


def _unresolvable(addr: HostPort | None) -> str:
    """Why a listen address would not resolve when start binds it ("" when it does)."""
    if addr is None or addr.host in ("", "::"):
        return ""
    try:
        resolve(addr, passive=True)
    except (OSError, UnicodeError) as exc:
        return str(getattr(exc, "strerror", None) or exc)
    return ""
