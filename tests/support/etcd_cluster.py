"""A real, local etcd cluster for integration tests.

Design: every member is a real ``etcd`` process on 127.0.0.1 with its own free
client and peer port, its own data directory and log file under ``workdir``, and
its own session (``start_new_session=True``) so that a signal sent to the test
runner's process group never reaches it.  Members are only ever signalled by the
PID this object started (never by name), so a test can kill, restart, pause and
resume one member while the others keep running.  Health is checked the way an
operator would, with ``etcdctl endpoint health``; every wait has a deadline on
``time.monotonic()``.

Learners (etcd 3.4+): ``add_learner()`` runs ``etcdctl member add NAME --learner`` on
the running members (retried while etcd calls the cluster too young to change) and
starts the new member with ``--initial-cluster-state
existing`` and the ``--initial-cluster`` etcdctl printed; it waits until the member
answers ``/v3/maintenance/status`` as a learner (``etcdctl endpoint health`` cannot
tell: a learner refuses the read it makes). ``promote(i)`` runs ``etcdctl member
promote``, retried while etcd says the learner is not in sync yet. ``extra_args`` are
added to every member's command line (e.g. ``--quota-backend-bytes``).

Member ids: the gRPC gateway's JSON (``/v3/maintenance/status``) gives
``header.member_id`` as a *decimal string* (uint64 encoded as a JSON string),
while ``etcdctl member list -w json`` gives ``ID`` as a JSON *number* (also
decimal).  Both are returned here as decimal strings, so they compare equal.

TLS: ``EtcdCluster(..., tls=MemberTls(...))`` starts every member as an operator
secures one: clients on https with ``--cert-file``, ``--key-file``,
``--client-cert-auth`` and ``--trusted-ca-file`` (peers stay plain), and every helper
here (etcdctl, ``status``) then presents the client certificate.
"""
from __future__ import annotations

import json
import logging
import os
import pathlib
import shutil
import signal
import ssl
import subprocess
import time
import urllib.request
import uuid
from dataclasses import dataclass, field
from typing import IO, Any

from .ports import free_ports

log = logging.getLogger(__name__)

HOST = "127.0.0.1"
# Per-attempt bounds for the health poll: short, so a poll never eats the deadline.
_HEALTH_DIAL_TIMEOUT = "1s"
_HEALTH_COMMAND_TIMEOUT = "2s"


@dataclass(frozen=True)
class MemberTls:
    """Files of a TLS cluster: the CA, the members' certificate, a client's."""
    ca: str
    cert: str
    key: str
    client_cert: str
    client_key: str


@dataclass
class Member:
    """One etcd member: its ports, files and (while running) its process."""

    name: str
    client_port: int
    peer_port: int
    data_dir: pathlib.Path
    log_path: pathlib.Path
    proc: subprocess.Popen[bytes] | None = field(default=None, repr=False)
    paused: bool = False
    # --initial-cluster of a member added to a running cluster (empty: a founding member)
    joined_cluster: str = ""
    scheme: str = "http"
    _log_file: IO[bytes] | None = field(default=None, repr=False)

    @property
    def client_addr(self) -> str:
        return f"{HOST}:{self.client_port}"

    @property
    def client_url(self) -> str:
        return f"{self.scheme}://{HOST}:{self.client_port}"

    @property
    def peer_url(self) -> str:
        return f"http://{HOST}:{self.peer_port}"

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc is not None else None

    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None


def _require_binaries() -> None:
    missing = [b for b in ("etcd", "etcdctl") if shutil.which(b) is None]
    if missing:
        raise RuntimeError(
            f"{', '.join(missing)} not found on PATH: install Debian's etcd-server and "
            "etcd-client (scripts/test does this); integration tests need a real etcd"
        )


def _tail(path: pathlib.Path, lines: int = 25) -> str:
    try:
        data = path.read_bytes()[-64 * 1024 :]
    except OSError as exc:
        return f"<cannot read {path}: {exc}>"
    return "\n".join(data.decode("utf-8", "replace").splitlines()[-lines:])


class EtcdCluster:
    """``size`` real etcd members on 127.0.0.1, data and logs under ``workdir``."""

    def __init__(self, workdir: pathlib.Path, size: int = 3, tls: MemberTls | None = None,
                 extra_args: list[str] | None = None) -> None:
        if size < 1:
            raise ValueError("size must be >= 1")
        self.workdir = pathlib.Path(workdir)
        self.size = size
        self.tls = tls
        self.extra_args = list(extra_args or [])
        self.members: list[Member] = []
        self.token = f"test-{uuid.uuid4().hex[:12]}"
        self._started = False

    # ----------------------------------------------------------------- lifecycle
    def start(self, timeout: float = 30) -> None:
        """Start all members and wait (bounded) until every one is healthy.

        A member that dies at once because its port was taken in the meantime
        (the free-port race) makes the whole start retry with new ports, once.
        """
        _require_binaries()
        if self._started:
            raise RuntimeError("cluster already started")
        self.workdir.mkdir(parents=True, exist_ok=True)
        deadline = time.monotonic() + timeout
        attempts = 2
        for attempt in range(1, attempts + 1):
            self._create_members()
            self._started = True
            t0 = time.monotonic()
            try:
                for i in range(self.size):
                    self._spawn(i)
                self.wait_healthy(self.client_endpoints(), max(0.0, deadline - time.monotonic()))
                log.info(
                    "etcd cluster of %d healthy in %.2fs: %s",
                    self.size, time.monotonic() - t0, ",".join(self.client_endpoints()),
                )
                return
            except TimeoutError as exc:
                port_race = any(
                    not m.running() and "address already in use" in _tail(m.log_path, 200)
                    for m in self.members
                )
                report = self._failure_report(str(exc))
                self.stop()
                if port_race and attempt < attempts and deadline - time.monotonic() > 5:
                    log.warning("etcd port taken during start, retrying with new ports")
                    for m in self.members:
                        shutil.rmtree(m.data_dir, ignore_errors=True)
                    self.token = f"test-{uuid.uuid4().hex[:12]}"
                    continue
                raise RuntimeError(report) from exc
            except BaseException:
                self.stop()
                raise

    def _create_members(self) -> None:
        ports = free_ports(2 * self.size)
        self.members = []
        for i in range(self.size):
            name = f"m{i + 1}"
            self.members.append(
                Member(
                    name=name,
                    client_port=ports[2 * i],
                    peer_port=ports[2 * i + 1],
                    data_dir=self.workdir / f"{name}.etcd",
                    log_path=self.workdir / f"{name}.log",
                    scheme="https" if self.tls is not None else "http",
                )
            )

    def _command(self, m: Member) -> list[str]:
        initial = m.joined_cluster or ",".join(
            f"{x.name}={x.peer_url}" for x in self.members[:self.size])
        return [
            "etcd",
            "--name", m.name,
            "--data-dir", str(m.data_dir),
            "--listen-client-urls", m.client_url,
            "--advertise-client-urls", m.client_url,
            "--listen-peer-urls", m.peer_url,
            "--initial-advertise-peer-urls", m.peer_url,
            "--initial-cluster", initial,
            "--initial-cluster-token", self.token,
            "--initial-cluster-state", "existing" if m.joined_cluster else "new",
            "--heartbeat-interval", "50",
            "--election-timeout", "500",
            *self.extra_args,
            *self._tls_flags(),
        ]

    def _tls_flags(self) -> list[str]:
        t = self.tls
        if t is None:
            return []
        return ["--cert-file", t.cert, "--key-file", t.key, "--client-cert-auth",
                "--trusted-ca-file", t.ca]

    def client_tls_flags(self) -> list[str]:
        """etcdctl flags that reach the members directly (empty for a plain cluster)."""
        t = self.tls
        if t is None:
            return []
        return [f"--cacert={t.ca}", f"--cert={t.client_cert}", f"--key={t.client_key}"]

    def _spawn(self, i: int) -> None:
        m = self.members[i]
        if m.running():
            raise RuntimeError(f"member {m.name} is already running (pid {m.pid})")
        if m._log_file is not None:
            m._log_file.close()
        m._log_file = open(m.log_path, "ab")
        m._log_file.write(f"\n==== starting {m.name} at {time.time():.3f} ====\n".encode())
        m._log_file.flush()
        m.proc = subprocess.Popen(
            self._command(m),
            stdin=subprocess.DEVNULL,
            stdout=m._log_file,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        m.paused = False
        log.info("started etcd %s pid %d client %s", m.name, m.proc.pid, m.client_addr)

    def stop(self, timeout: float = 10) -> None:
        """SIGTERM every member this object started, SIGKILL after ``timeout``. Idempotent.

        The leader is stopped last: a leader sent SIGTERM while its followers
        are stopping tries to hand leadership over and waits ~6 s for that to
        time out, whereas a leader whose peers are already gone skips it.
        """
        running = [m for m in self.members if m.proc is not None]
        deadline = time.monotonic() + timeout
        leader = self._find_leader() if len(running) > 1 else None
        first = [m for m in running if m is not leader]
        self._terminate(first)
        if leader is not None:
            self._wait_exit(first, min(deadline, time.monotonic() + 3))
            self._terminate([leader])
        for m in running:
            assert m.proc is not None
            try:
                m.proc.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                log.warning("etcd %s pid %d ignored SIGTERM, sending SIGKILL", m.name, m.proc.pid)
                try:
                    os.kill(m.proc.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
                m.proc.wait(timeout=10)
            m.proc = None
            m.paused = False
        for m in self.members:
            if m._log_file is not None:
                m._log_file.close()
                m._log_file = None
        self._started = False

    @staticmethod
    def _terminate(members: list[Member]) -> None:
        for m in members:
            if m.proc is not None and m.proc.poll() is None:
                try:
                    if m.paused:
                        os.kill(m.proc.pid, signal.SIGCONT)
                    os.kill(m.proc.pid, signal.SIGTERM)
                except ProcessLookupError:
                    pass

    @staticmethod
    def _wait_exit(members: list[Member], deadline: float) -> None:
        for m in members:
            if m.proc is None:
                continue
            try:
                m.proc.wait(timeout=max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                return

    def _find_leader(self) -> Member | None:
        """The running member that says it is the leader (quick, best effort)."""
        for m in self.members:
            if not m.running() or m.paused:
                continue
            try:
                st = self.status(m.client_addr, timeout=0.5, tls=self.tls)
            except (OSError, ValueError, KeyError):
                continue
            if str(st.get("leader")) == str(st["header"]["member_id"]):
                return m
        return None

    def __enter__(self) -> "EtcdCluster":
        if not self._started:
            self.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.stop()

    # ------------------------------------------------------------ fault control
    def _member(self, i: int) -> Member:
        return self.members[i]

    def kill(self, i: int, timeout: float = 10) -> None:
        """SIGKILL member ``i`` by PID and wait for it to exit."""
        m = self._member(i)
        if m.proc is None:
            raise RuntimeError(f"member {m.name} is not running")
        try:
            os.kill(m.proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        m.proc.wait(timeout=timeout)
        log.info("killed etcd %s pid %d", m.name, m.proc.pid)
        m.proc = None
        m.paused = False

    def restart(self, i: int, timeout: float = 20) -> None:
        """Start member ``i`` again (same command and data dir) and wait until healthy.

        A member still running is killed first.
        """
        m = self._member(i)
        if m.proc is not None:
            self.kill(i)
        self._spawn(i)
        try:
            self.wait_healthy([m.client_addr], timeout)
        except TimeoutError as exc:
            raise RuntimeError(self._failure_report(str(exc), only=[m])) from exc

    def pause(self, i: int) -> None:
        """SIGSTOP member ``i`` (its kernel still completes TCP handshakes)."""
        m = self._member(i)
        if m.proc is None:
            raise RuntimeError(f"member {m.name} is not running")
        os.kill(m.proc.pid, signal.SIGSTOP)
        m.paused = True

    def resume(self, i: int) -> None:
        """SIGCONT member ``i``."""
        m = self._member(i)
        if m.proc is None:
            raise RuntimeError(f"member {m.name} is not running")
        os.kill(m.proc.pid, signal.SIGCONT)
        m.paused = False

    # ------------------------------------------------------------- membership
    def add_learner(self, timeout: float = 30) -> int:
        """Add a learner to the running cluster and start it; its index in ``members``.

        Raises RuntimeError (with etcdctl's output or the member's log) on failure.
        """
        deadline = time.monotonic() + timeout
        client_port, peer_port = free_ports(2)
        name = f"m{len(self.members) + 1}"
        m = Member(name=name, client_port=client_port, peer_port=peer_port,
                   data_dir=self.workdir / f"{name}.etcd", log_path=self.workdir / f"{name}.log",
                   scheme="https" if self.tls is not None else "http")
        while True:  # etcd refuses reconfiguration until its members have been
            # connected for a few seconds ("unhealthy cluster")
            cp = self.etcdctl("member", "add", name, "--learner", f"--peer-urls={m.peer_url}",
                              endpoints=self.founding_endpoints())
            if cp.returncode == 0:
                break
            if "unhealthy cluster" not in cp.stderr or time.monotonic() > deadline:
                raise RuntimeError(
                    f"etcdctl member add --learner failed: {cp.stderr.strip()[-1000:]}")
            time.sleep(0.5)
        for line in cp.stdout.splitlines():
            if line.startswith("ETCD_INITIAL_CLUSTER="):
                m.joined_cluster = line.partition("=")[2].strip().strip('"')
        if not m.joined_cluster:
            raise RuntimeError(f"etcdctl member add printed no ETCD_INITIAL_CLUSTER: {cp.stdout}")
        self.members.append(m)
        index = len(self.members) - 1
        self._spawn(index)
        while True:
            try:
                if self.status(m.client_addr, timeout=1, tls=self.tls).get("isLearner"):
                    log.info("learner %s answers at %s", name, m.client_addr)
                    return index
            except (OSError, ValueError, KeyError):
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(self._failure_report(
                    f"learner {name} did not answer as a learner within {timeout}s", only=[m]))
            time.sleep(0.2)

    def promote(self, i: int, timeout: float = 30) -> None:
        """``etcdctl member promote`` member ``i``, retried until it is in sync."""
        m = self._member(i)
        member_id = format(int(self.status(m.client_addr, tls=self.tls)["header"]["member_id"]),
                           "x")
        deadline = time.monotonic() + timeout
        while True:
            cp = self.etcdctl("member", "promote", member_id,
                              endpoints=self.founding_endpoints())
            if cp.returncode == 0:
                log.info("promoted %s (%s)", m.name, member_id)
                return
            if time.monotonic() > deadline:
                raise RuntimeError(f"etcdctl member promote {member_id} failed: "
                                   f"{cp.stderr.strip()[-1000:]}")
            time.sleep(0.3)

    # ---------------------------------------------------------------- queries
    def client_endpoints(self) -> list[str]:
        """Client addresses ("127.0.0.1:PORT") of all members, running or not."""
        return [m.client_addr for m in self.members]

    def founding_endpoints(self) -> list[str]:
        """The running members the cluster started with (voters; a learner refuses most
        of etcdctl's requests)."""
        return [m.client_addr for m in self.members[:self.size] if m.running() and not m.paused]

    def running_endpoints(self) -> list[str]:
        return [m.client_addr for m in self.members if m.running() and not m.paused]

    def wait_healthy(self, endpoints: list[str], timeout: float) -> None:
        """Poll ``etcdctl endpoint health`` until every endpoint is healthy.

        Raises TimeoutError (with the last etcdctl output) after ``timeout`` s.
        """
        deadline = time.monotonic() + timeout
        last = ""
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise TimeoutError(
                    f"etcd endpoints {endpoints} not healthy after {timeout:.1f}s; last check:\n{last}"
                )
            try:
                cp = self.etcdctl(
                    "endpoint", "health", "-w", "json",
                    f"--dial-timeout={_HEALTH_DIAL_TIMEOUT}",
                    f"--command-timeout={_HEALTH_COMMAND_TIMEOUT}",
                    endpoints=endpoints,
                    timeout=min(5.0, max(1.0, remaining)),
                )
                last = (cp.stdout + cp.stderr).strip()[-2000:]
                if cp.returncode == 0 and self._all_healthy(cp.stdout, endpoints):
                    return
            except subprocess.TimeoutExpired:
                last = "etcdctl endpoint health timed out"
            time.sleep(min(0.2, max(0.0, deadline - time.monotonic())))

    @staticmethod
    def _all_healthy(stdout: str, endpoints: list[str]) -> bool:
        try:
            rows = json.loads(stdout)
        except ValueError:
            return False
        healthy = {r.get("endpoint") for r in rows if r.get("health") is True}
        return all(e in healthy for e in endpoints)

    def etcdctl(
        self, *args: str, endpoints: list[str] | str, timeout: float = 10
    ) -> subprocess.CompletedProcess[str]:
        """Run ``etcdctl`` (API v3) against ``endpoints``; output captured as text.

        ``--dial-timeout=2s --command-timeout=5s`` are added unless given in ``args``.
        Raises subprocess.TimeoutExpired (after killing etcdctl) past ``timeout``.
        """
        if isinstance(endpoints, str):
            endpoints = [endpoints]
        extra: list[str] = []
        if not any(a.startswith("--dial-timeout") for a in args):
            extra.append("--dial-timeout=2s")
        if not any(a.startswith("--command-timeout") for a in args):
            extra.append("--command-timeout=5s")
        if not any(a.startswith(("--cacert", "--cert", "--key", "--insecure")) for a in args):
            extra += self.client_tls_flags()
        cmd = ["etcdctl", f"--endpoints={','.join(endpoints)}", *extra, *args]
        env = dict(os.environ, ETCDCTL_API="3")
        # etcdctl refuses to run when ETCDCTL_<FLAG> and --<flag> are both set.
        for var in ("ETCDCTL_ENDPOINTS", "ETCDCTL_DIAL_TIMEOUT", "ETCDCTL_COMMAND_TIMEOUT"):
            env.pop(var, None)
        return subprocess.run(
            cmd, env=env, stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=timeout
        )

    @staticmethod
    def status(endpoint: str, timeout: float = 5, tls: MemberTls | None = None) -> dict[str, Any]:
        """JSON of ``POST http://endpoint/v3/maintenance/status`` with ``{}`` (https,
        with the client certificate, when ``tls`` is given).

        uint64 fields (member_id, leader...) come as decimal strings.
        """
        scheme, context = "http", None
        if tls is not None:
            scheme = "https"
            context = ssl.create_default_context(cafile=tls.ca)
            context.load_cert_chain(tls.client_cert, tls.client_key)
        req = urllib.request.Request(
            f"{scheme}://{endpoint}/v3/maintenance/status",
            data=b"{}",
            headers={"Content-Type": "application/json"},
            method="POST",
        )
        with urllib.request.urlopen(req, timeout=timeout, context=context) as resp:
            body: dict[str, Any] = json.loads(resp.read())
        return body

    @classmethod
    def member_id_of(cls, endpoint: str, timeout: float = 5) -> str:
        """Decimal member id of whoever answers ``/v3/maintenance/status`` at ``endpoint``.

        ``endpoint`` is "host:port" (a member or a gateway in front of members), spoken
        to in plain HTTP (a gateway that dials TLS members takes plain clients).
        """
        return str(cls.status(endpoint, timeout)["header"]["member_id"])

    def member_name_by_id(self, timeout: float = 10) -> dict[str, str]:
        """Map decimal member id (as member_id_of returns it) -> member name."""
        endpoints = self.running_endpoints() or self.client_endpoints()
        cp = self.etcdctl("member", "list", "-w", "json", endpoints=endpoints, timeout=timeout)
        if cp.returncode != 0:
            raise RuntimeError(f"etcdctl member list failed: {cp.stderr.strip()[-1000:]}")
        # json keeps uint64 ids exact (Python ints are unbounded).
        return {str(m["ID"]): m.get("name", "") for m in json.loads(cp.stdout)["members"]}

    def log_tail(self, i: int, lines: int = 25) -> str:
        return _tail(self.members[i].log_path, lines)

    def _failure_report(self, why: str, only: list[Member] | None = None) -> str:
        parts = [why]
        for m in only if only is not None else self.members:
            state = "running" if m.running() else (
                f"exited {m.proc.returncode}" if m.proc is not None else "not running")
            parts.append(f"--- {m.name} ({state}) {m.log_path} tail ---\n{_tail(m.log_path)}")
        return "\n".join(parts)
