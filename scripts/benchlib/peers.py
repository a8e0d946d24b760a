"""The peers the bench compares: direct, etcd-gatewayd, the Go gateway, HAProxy (two
ways), and c-splice, a reference splice relay in C that takes part in bulk only.

design: a peer turns a backend address into a listen port the load generator
talks to.  `start()` launches one fresh proxy instance for one workload on one
backend and returns once it is ready (its port is LISTENing and, for pre-fork
peers, all workers are up); `stop()` stops it by PID.  "direct" starts nothing
and hands out the backend's own port.  A peer that cannot start raises
StartError; the bench records "failed to start" and moves on.

`start(backend_port, tls=...)` with a `TlsBackend` (the tls-* workloads) makes
the peer dial the backend with TLS, verifying it against the bench's CA, with a
full handshake per connection; only TLS_PEERS can.
"""
import os
import shutil
import subprocess
import time

from procs import Managed, StartError, free_port, listening, tree, wait_until

PEERS = ["direct", "etcd-gatewayd", "go-gateway", "haproxy", "haproxy-splice", "c-splice"]
PROXIES = PEERS[1:]
OURS, GO, DIRECT = "etcd-gatewayd", "go-gateway", "direct"
HAPROXY = "haproxy"
C_SPLICE = "c-splice"
TLS_PEERS = (OURS, HAPROXY)  # peers that can dial a backend with TLS (haproxy-splice cannot splice TLS)

READY_TIMEOUT = 20.0


class Peer:
    name = "?"
    describe = ""
    only: tuple = ()  # the workloads this peer takes part in; empty: every one it can dial

    def __init__(self, ctx):
        self.ctx = ctx
        self.proc = None
        self.last_log = None
        self.last_rc = None
        self.tls = None

    def start(self, backend_port, tls=None):
        raise NotImplementedError

    @property
    def root_pid(self):
        return self.proc.pid if self.proc else None

    def pids(self):
        return tree(self.proc.pid) if self.proc and self.proc.alive() else []

    def alive(self):
        return self.proc is not None and self.proc.alive()

    def stop(self):
        """Stop this instance by PID (SIGTERM, bounded wait, SIGKILL); returns its exit status."""
        if self.proc:
            self.last_rc = self.proc.stop(grace=10.0)
            self.proc = None
        return self.last_rc

    def log_tail(self, n=3):
        try:
            with open(self.last_log, "rb") as f:
                lines = [ln for ln in f.read().decode(errors="replace").splitlines() if ln.strip()]
            return " | ".join(lines[-n:])
        except (OSError, TypeError):
            return ""

    def restart(self):
        """A fresh instance in front of the same backend (stops this one by PID); returns the new port."""
        self.stop()
        return self.start(self.backend_port, tls=self.tls)

    def _launch(self, argv, port, expect_procs=1, cwd=None):
        log = os.path.join(self.ctx.logdir, f"{self.name}-{port}.log")
        self.last_log = log
        self.proc = Managed(self.name, argv, log, cwd=cwd)
        ok = wait_until(lambda: listening(port) or not self.proc.alive(), READY_TIMEOUT)
        if not ok or not self.proc.alive() or not listening(port):
            tail = " | ".join(self.proc.log_tail(4).splitlines())
            self.stop()
            raise StartError(f"{self.name} did not listen on {port}: {tail}")
        if expect_procs > 1:
            wait_until(lambda: len(self.pids()) >= expect_procs or not self.proc.alive(), READY_TIMEOUT)
            if not self.proc.alive() or len(self.pids()) < expect_procs:
                tail = " | ".join(self.proc.log_tail(4).splitlines())
                self.stop()
                raise StartError(f"{self.name}: fewer than {expect_procs} processes came up: {tail}")
        time.sleep(0.2)  # let the accept loops settle
        return port


class Direct(Peer):
    name = DIRECT
    describe = "no proxy: the load generator talks to the backend itself"

    def start(self, backend_port, tls=None):
        self.backend_port = backend_port
        return backend_port

    def pids(self):
        return []

    def alive(self):
        return True


class Gatewayd(Peer):
    name = OURS

    def __init__(self, ctx):
        super().__init__(ctx)
        venv = os.path.join(ctx.repo, ".venv", "bin", "python")
        self.python = venv if os.access(venv, os.X_OK) else (shutil.which("python3") or "python3")
        self.workers = os.cpu_count() or 1
        # --health-check=tcp: most backends here (C echo, iperf3) are not etcd, and the
        # default etcd check would mark them down (every client then dialled "all down");
        # a TCP connect per interval costs next to nothing
        self.describe = (f"{self.python} bin/etcd-gatewayd --workers={self.workers} "
                         "--log-level=warn --health-check=tcp")

    def start(self, backend_port, tls=None):
        self.backend_port, self.tls = backend_port, tls
        port = free_port()
        endpoint = f"127.0.0.1:{backend_port}"
        argv = [
            self.python, os.path.join(self.ctx.repo, "bin", "etcd-gatewayd"),
            f"--endpoints={'https://' + endpoint if tls else endpoint}",
            f"--listen-addr=127.0.0.1:{port}", f"--workers={self.workers}", "--log-level=warn",
            "--health-check=tcp",
        ]
        if tls:
            argv.append(f"--cacert={tls.ca}")
        return self._launch(argv, port, expect_procs=1 + self.workers, cwd=self.ctx.repo)


class GoGateway(Peer):
    name = GO
    describe = "etcd gateway start --retry-delay=5s (Debian etcd-server)"

    def start(self, backend_port, tls=None):
        if tls:
            raise StartError("the Go gateway cannot dial members with TLS")
        self.backend_port = backend_port
        port = free_port()
        argv = [
            self.ctx.etcd_bin, "gateway", "start", f"--endpoints=127.0.0.1:{backend_port}",
            f"--listen-addr=127.0.0.1:{port}", "--retry-delay=5s",
        ]
        return self._launch(argv, port)


class CSplice(Peer):
    """A reference splice relay: scripts/benchlib/splicerelay.c (see its head), with
    etcd-gatewayd's bulk levers (pre-fork workers = CPUs on one listener, 1 MiB pipes,
    a 512 KiB low-water mark on a streaming source) and nothing else. Bulk only: it
    sets up pipes for every connection and has no limits or timers, so its figures
    for small messages, new connections or idle ones would describe nothing real."""

    name = C_SPLICE
    only = ("bulk",)

    def __init__(self, ctx):
        super().__init__(ctx)
        self.workers = os.cpu_count() or 1
        self.describe = f"splicerelay.c (C, epoll + splice, {self.workers} pre-fork workers), bulk only"

    def start(self, backend_port, tls=None):
        if tls:
            raise StartError("c-splice cannot dial TLS")
        self.backend_port = backend_port
        port = free_port()
        argv = [self.ctx.splicerelay, str(port), str(backend_port), str(self.workers)]
        return self._launch(argv, port, expect_procs=1 + self.workers)


HAPROXY_MAXCONN = 9400  # 2 fds per connection (+ pipes) must fit the 20,000 open-files hard limit


class HAProxy(Peer):
    def __init__(self, ctx, splice):
        super().__init__(ctx)
        self.splice = splice
        self.name = "haproxy-splice" if splice else "haproxy"
        n = os.cpu_count() or 1
        self.describe = f"haproxy mode tcp, nbthread {n}" + (", option splice-request + splice-response" if splice else "")

    def config(self, port, backend_port, tls=None):
        n = os.cpu_count() or 1
        lines = [
            "global",
            f"    nbthread {n}",
            f"    maxconn {HAPROXY_MAXCONN}",
        ]
        if self.splice:
            lines.append("    maxpipes 256")
        lines += [
            "defaults",
            "    mode tcp",
            f"    maxconn {HAPROXY_MAXCONN}",
            "    timeout connect 5s",
            "    timeout client 10m",
            "    timeout server 10m",
        ]
        if self.splice:
            # splice-auto was tried first: on this kind of machine its CPU per GB
            # equals plain copying (it rarely decides to splice), so the zero-copy
            # variant forces splicing both ways.
            lines.append("    option splice-request")
            lines.append("    option splice-response")
        lines += [
            "frontend fe",
            f"    bind 127.0.0.1:{port}",
            "    default_backend be",
            "backend be",
            f"    server s1 127.0.0.1:{backend_port}" + (
                f" ssl verify required ca-file {tls.ca} verifyhost {tls.name} no-ssl-reuse" if tls else ""),
            "",
        ]
        return "\n".join(lines)

    def start(self, backend_port, tls=None):
        if tls and self.splice:
            raise StartError("haproxy-splice cannot splice a TLS leg; haproxy is the TLS peer")
        self.backend_port, self.tls = backend_port, tls
        port = free_port()
        cfg = os.path.join(self.ctx.logdir, f"{self.name}-{port}.cfg")
        with open(cfg, "w") as f:
            f.write(self.config(port, backend_port, tls))
        return self._launch([self.ctx.haproxy_bin, "-db", "-f", cfg], port)


class TlsBackend:
    """The bench's TLS material: a CA, and a certificate for the terminator (EC P-256,
    SAN IP:127.0.0.1 and DNS:localhost), made with the openssl CLI into `directory`."""

    name = "localhost"

    def __init__(self, directory):
        os.makedirs(directory, exist_ok=True)
        self.ca = os.path.join(directory, "ca.crt")
        ca_key = os.path.join(directory, "ca.key")
        key = os.path.join(directory, "server.key")
        csr = os.path.join(directory, "server.csr")
        ext = os.path.join(directory, "server.ext")
        crt = os.path.join(directory, "server.crt")
        self.pem = os.path.join(directory, "server.pem")  # certificate + key, as HAProxy wants
        ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes"]
        _openssl("req", "-x509", *ec, "-keyout", ca_key, "-out", self.ca, "-days", "7",
                 "-subj", "/CN=bench CA", "-addext", "basicConstraints=critical,CA:TRUE",
                 "-addext", "keyUsage=critical,keyCertSign,cRLSign")
        with open(ext, "w") as f:
            f.write("subjectAltName=IP:127.0.0.1,DNS:localhost\nextendedKeyUsage=serverAuth\n")
        _openssl("req", *ec, "-keyout", key, "-out", csr, "-subj", "/CN=localhost")
        _openssl("x509", "-req", "-in", csr, "-CA", self.ca, "-CAkey", ca_key, "-CAcreateserial",
                 "-days", "7", "-extfile", ext, "-out", crt)
        with open(self.pem, "w") as out:
            for path in (crt, key):
                with open(path) as f:
                    out.write(f.read())

    def terminator_config(self, port, backend_port):
        """HAProxy that ends TLS in front of a plain backend (shared by every peer)."""
        n = os.cpu_count() or 1
        return "\n".join([
            "global", f"    nbthread {n}", f"    maxconn {HAPROXY_MAXCONN}",
            "defaults", "    mode tcp", f"    maxconn {HAPROXY_MAXCONN}", "    timeout connect 5s",
            "    timeout client 10m", "    timeout server 10m",
            "frontend fe", f"    bind 127.0.0.1:{port} ssl crt {self.pem}", "    default_backend be",
            "backend be", f"    server s1 127.0.0.1:{backend_port}", ""])


def _openssl(*args):
    p = subprocess.run(["openssl", *args], capture_output=True, text=True, timeout=60)
    if p.returncode != 0:
        raise RuntimeError(f"openssl {' '.join(args[:2])} failed: {p.stderr.strip()[-300:]}")


def make_peer(name, ctx):
    if name == DIRECT:
        return Direct(ctx)
    if name == OURS:
        return Gatewayd(ctx)
    if name == GO:
        return GoGateway(ctx)
    if name == "haproxy":
        return HAProxy(ctx, splice=False)
    if name == "haproxy-splice":
        return HAProxy(ctx, splice=True)
    if name == C_SPLICE:
        return CSplice(ctx)
    raise ValueError(f"unknown peer {name!r}; known: {', '.join(PEERS)}")
