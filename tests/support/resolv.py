"""The system resolver, as one test's gateway sees it: its own /etc/hosts and DNS server.

design: the gateway resolves names with getaddrinfo, which reads /etc/hosts and then
asks the servers in /etc/resolv.conf (port 53 only). Changing those files for real
would change every other test and developer on the machine. Instead the gateway runs
in a mount namespace of its own (`prefix()`: `unshare --mount`, then bind mounts over
/etc/hosts and /etc/resolv.conf, then exec: the PID is the gateway's): it reads a
hosts file this object owns (a copy of the real one plus the test's lines) and asks a
test-owned dnsmasq listening on port 53 of a loopback address picked at random
(127.53.x.y), so concurrent tests do not meet. Resolution stays real: glibc's files
and dns backends per nsswitch.conf. The hosts file is rewritten in place (same inode),
so the bind mount sees each change; dnsmasq is restarted on its address for new
records (`set_records`). Nothing outside the namespace changes; `stop()` stops
dnsmasq by PID. Needs root (tests run as root) and util-linux `unshare`.
"""
from __future__ import annotations

import pathlib
import random
from typing import Sequence

from .dns import Dnsmasq

DOMAIN = "dnstest.test"
_HOSTS = pathlib.Path("/etc/hosts")
_BIND = ('mount --bind "$0" /etc/resolv.conf && mount --bind "$1" /etc/hosts '
         '&& shift && exec "$@"')


class PrivateResolution:
    """A hosts file and a DNS server (records for names under DOMAIN) for one process."""

    def __init__(self, workdir: pathlib.Path, domain: str = DOMAIN, attempts: int = 5):
        self.workdir = pathlib.Path(workdir)
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.domain = domain
        self.hosts_path = self.workdir / "hosts"
        self.resolv_path = self.workdir / "resolv.conf"
        self.dns = self._start_dns(attempts)
        self.resolv_path.write_text(f"nameserver {self.dns.host}\n"
                                    "options timeout:1 attempts:1\n")
        self.set_hosts({})

    def _start_dns(self, attempts: int) -> Dnsmasq:
        """dnsmasq on port 53 of a random 127.53.x.y (another one if that is taken)."""
        for attempt in range(attempts):
            host = f"127.53.{random.randint(1, 254)}.{random.randint(1, 254)}"
            try:
                return Dnsmasq(self.workdir / f"dnsmasq{attempt}", self.domain, port=53,
                               host=host)
            except RuntimeError:
                if attempt == attempts - 1:
                    raise
        raise AssertionError("not reached")

    def name(self, short: str) -> str:
        """A name in the test's own domain."""
        return f"{short}.{self.domain}"

    def set_hosts(self, entries: dict[str, str | Sequence[str]]) -> None:
        """The hosts file: the machine's own lines, then `name -> address(es)`."""
        lines = [_HOSTS.read_text()]
        for name, ips in entries.items():
            for ip in [ips] if isinstance(ips, str) else ips:
                lines.append(f"{ip} {name}\n")
        with open(self.hosts_path, "w") as stream:  # in place: the bind mount follows
            stream.write("".join(lines))

    def set_records(self, records: dict[str, str | Sequence[str]]) -> None:
        """The DNS server's A/AAAA records (name -> address or addresses); the others
        in the domain answer NXDOMAIN."""
        self.dns.set_records(records)

    def prefix(self) -> list[str]:
        """A command prefix that runs the command in this resolution (it execs)."""
        return ["unshare", "--mount", "--propagation", "private", "--", "sh", "-c", _BIND,
                str(self.resolv_path), str(self.hosts_path)]

    def stop(self) -> None:
        self.dns.stop()

    def __enter__(self) -> PrivateResolution:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
