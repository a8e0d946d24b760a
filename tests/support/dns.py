"""Real DNS servers for SRV tests: dnsmasq with given records, and a silent UDP port.

Design:
- Dnsmasq runs /usr/sbin/dnsmasq in the foreground on 127.0.0.1:port with records
  given on the command line (--host-record, --srv-host) and `--local=/DOMAIN/`, so
  unknown names in the zone get NXDOMAIN. dnsmasq does not reload command-line
  records, so `set_records()` stops it (by PID) and starts it again on the same port.
  `start()` waits (bounded) until a query is answered, polling with dnspython.
- mode="servfail": a real SERVFAIL. A second, plain dnsmasq holds the zone (unsigned)
  and the front one forwards to it with DNSSEC validation and the root trust anchor:
  the unsigned answers cannot be proven, so the front answers SERVFAIL to everything.
- mode="refused": no --local and no upstream: dnsmasq answers REFUSED.
- BlackholeDNS: a UDP socket bound on a free port that never reads, so queries to
  it time out (no ICMP port-unreachable either).
- Dnsmasq listens on 127.0.0.1 unless given another `host` (tests/support/resolv.py puts
  one on port 53 of a loopback address of its own, for the system resolver).
- Both take an optional `port`, so a test can put a failing server where a working
  one was (stop the Dnsmasq first), without restarting the client that uses it.
Every process is stopped by its PID (SIGTERM, bounded wait, then SIGKILL).
"""
from __future__ import annotations

import pathlib
import shutil
import socket
import subprocess
import time
from typing import Sequence

import dns.exception
import dns.message
import dns.query

from .ports import free_port

DNSMASQ = "/usr/sbin/dnsmasq"
HOST = "127.0.0.1"
# IANA root zone KSK-2017 as a DS record (only used to make validation fail on purpose)
ROOT_TRUST_ANCHOR = ".,20326,8,2,E06D44B80B8F1D39A95C0B0D7C65D08458E880409BBC683457104237C7F8EC8D"

SrvEntry = tuple[str, str, int, int, int]  # name, target, port, priority, weight


def available() -> bool:
    return pathlib.Path(DNSMASQ).exists() or shutil.which("dnsmasq") is not None


def _binary() -> str:
    return DNSMASQ if pathlib.Path(DNSMASQ).exists() else (shutil.which("dnsmasq") or DNSMASQ)


class Dnsmasq:
    """dnsmasq on 127.0.0.1 (a free port) answering for `domain`."""

    def __init__(self, workdir: pathlib.Path | str, domain: str = "example.test",
                 mode: str = "normal", start: bool = True, timeout: float = 10.0,
                 port: int | None = None, host: str = HOST) -> None:
        if mode not in ("normal", "servfail", "refused"):
            raise ValueError(f"mode {mode!r}")
        self.workdir = pathlib.Path(workdir)
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.domain = domain.rstrip(".")
        self.mode = mode
        self.timeout = timeout
        self.host = host
        self.port = port if port is not None else free_port(host)
        self.addr = f"{host}:{self.port}"
        self.hosts: dict[str, str | Sequence[str]] = {}
        self.srv: list[SrvEntry] = []
        self.proc: subprocess.Popen | None = None
        self.upstream: Dnsmasq | None = None
        self._starts = 0
        if mode == "servfail":
            self.upstream = Dnsmasq(self.workdir / "upstream", domain, start=False,
                                    timeout=timeout)
        if start:
            self.start()

    # -- records ----------------------------------------------------------------
    def set_records(self, hosts: dict[str, str | Sequence[str]] | None = None,
                    srv: Sequence[SrvEntry] = ()) -> None:
        """Replace all records (host name -> IP, or several: one A or AAAA record each;
        SRV entries) and restart on the same port."""
        self.hosts = dict(hosts or {})
        self.srv = [tuple(e) for e in srv]  # type: ignore[misc]
        if self.upstream is not None:
            self.upstream.set_records(hosts, srv)
        self.restart()

    def _record_args(self) -> list[str]:
        args = [f"--host-record={name},{ip}" for name, ips in self.hosts.items()
                for ip in ([ips] if isinstance(ips, str) else ips)]
        args += [f"--srv-host={n},{t},{p},{pr},{w}" for n, t, p, pr, w in self.srv]
        return args

    def command(self) -> list[str]:
        cmd = [_binary(), "--keep-in-foreground", f"--port={self.port}",
               f"--listen-address={self.host}", "--bind-interfaces", "--no-resolv", "--no-hosts",
               "--conf-file=/dev/null", "--pid-file=", "--user=root", "--log-facility=-"]
        if self.mode == "normal":
            return cmd + [f"--local=/{self.domain}/"] + self._record_args()
        if self.mode == "servfail":
            assert self.upstream is not None
            return cmd + [f"--server={HOST}#{self.upstream.port}", "--dnssec",
                          f"--trust-anchor={ROOT_TRUST_ANCHOR}"]
        return cmd  # refused: nothing local, nowhere to forward

    # -- lifecycle --------------------------------------------------------------
    def start(self) -> None:
        if self.proc is not None:
            return
        if self.upstream is not None and self.upstream.proc is None:
            self.upstream.start()
        self._starts += 1
        log_path = self.workdir / f"dnsmasq.{self._starts}.log"
        with open(log_path, "wb") as out:
            self.proc = subprocess.Popen(self.command(), stdin=subprocess.DEVNULL,
                                         stdout=out, stderr=subprocess.STDOUT)
        try:
            self._wait_ready(log_path)
        except BaseException:
            self.stop()
            raise

    def _wait_ready(self, log_path: pathlib.Path) -> None:
        deadline = time.monotonic() + self.timeout
        query = dns.message.make_query(f"ready-probe.{self.domain}", "A")
        while True:
            assert self.proc is not None
            if self.proc.poll() is not None:
                raise RuntimeError(f"dnsmasq exited with {self.proc.returncode} on port "
                                   f"{self.port}: {log_path.read_text(errors='replace')[-2000:]}")
            try:
                dns.query.udp(query, self.host, port=self.port, timeout=0.2)
                return  # any answer (NXDOMAIN, SERVFAIL, REFUSED) means it is serving
            except (dns.exception.Timeout, OSError):
                pass
            if time.monotonic() > deadline:
                raise TimeoutError(f"dnsmasq on port {self.port} did not answer within "
                                   f"{self.timeout}s")
            time.sleep(0.05)

    def stop(self) -> None:
        proc, self.proc = self.proc, None
        if proc is not None and proc.poll() is None:
            proc.terminate()  # by PID
            try:
                proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=5)
        if self.upstream is not None:
            self.upstream.stop()

    def restart(self) -> None:
        own = self.proc
        self.proc = None
        if own is not None and own.poll() is None:
            own.terminate()
            try:
                own.wait(timeout=5)
            except subprocess.TimeoutExpired:
                own.kill()
                own.wait(timeout=5)
        self.start()

    def __enter__(self) -> "Dnsmasq":
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


class BlackholeDNS:
    """A UDP port on 127.0.0.1 (free, or `port`) that accepts datagrams and never answers."""

    def __init__(self, port: int = 0) -> None:
        self._sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self._sock.bind((HOST, port))
        self.port: int = self._sock.getsockname()[1]
        self.addr = f"{HOST}:{self.port}"

    def stop(self) -> None:
        self._sock.close()

    def __enter__(self) -> "BlackholeDNS":
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
