"""TLS: origination to a TLS etcd cluster, termination for clients, rotation, bad input.

Against a real three-member etcd started with --cert-file, --key-file,
--client-cert-auth and --trusted-ca-file; certificates made with `openssl` here
(tests/support/tls.py). Which certificate a listener presents is read with
`openssl s_client`, as an operator would.
"""
from __future__ import annotations

import http.client
import json
import os
import shutil
import signal
import socket
import ssl
import subprocess
import threading
import time
import urllib.request

import pytest

from tests.support import syscalls
from tests.support import tls as pki_support
from tests.support.clients import echo_once, wait_until
from tests.support.dns import Dnsmasq
from tests.support.echo import EchoServer
from tests.support.etcd_cluster import EtcdCluster, MemberTls
from tests.support.gateway_proc import run_gateway
from tests.support.ports import free_port
from tests.support.resolv import PrivateResolution

pytestmark = pytest.mark.integration


# -- fixtures ----------------------------------------------------------------------
@pytest.fixture(scope="module")
def pki(tmp_path_factory):
    return pki_support.ClusterPki(tmp_path_factory.mktemp("pki"))


@pytest.fixture(scope="module")
def tls_cluster(tmp_path_factory, pki):
    files = MemberTls(ca=pki.ca.cert, cert=pki.member.cert, key=pki.member.key,
                      client_cert=pki.client.cert, client_key=pki.client.key)
    cluster = EtcdCluster(tmp_path_factory.mktemp("etcd-tls"), size=3, tls=files)
    cluster.start(timeout=30)
    try:
        yield cluster
    finally:
        cluster.stop()


def https_endpoints(cluster: EtcdCluster) -> str:
    return ",".join(f"https://{addr}" for addr in cluster.client_endpoints())


def originating(pki, cluster, *extra: str) -> list[str]:
    """Gateway flags: dial the TLS cluster with the client certificate."""
    return ["--endpoints", https_endpoints(cluster), "--cacert", pki.ca.cert,
            "--cert", pki.client.cert, "--key", pki.client.key,
            "--retry-delay", "1s", "--dial-timeout", "2s", "--workers", "1", *extra]


def start(gateway_factory, args: list[str], metrics: bool = True):
    addr = f"127.0.0.1:{free_port()}"
    extra = ["--listen-addr", addr]
    maddr = ""
    if metrics:
        maddr = f"127.0.0.1:{free_port()}"
        extra += ["--metrics-addr", maddr]
    gw = gateway_factory([*args, *extra])
    gw.addr, gw.maddr = addr, maddr
    return gw


def etcdctl(*args: str, endpoint: str, tls: list[str] | None = None,
            timeout: float = 20) -> subprocess.CompletedProcess[str]:
    """etcdctl as a client of the gateway: plain unless `tls` flags are given."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("ETCDCTL_")}
    env["ETCDCTL_API"] = "3"
    cmd = ["etcdctl", f"--endpoints={endpoint}", "--dial-timeout=3s",
           "--command-timeout=5s", *(tls or []), *args]
    return subprocess.run(cmd, env=env, stdin=subprocess.DEVNULL, capture_output=True,
                          text=True, timeout=timeout)


def metrics_text(gw) -> str:
    with urllib.request.urlopen(f"http://{gw.maddr}/metrics", timeout=5) as resp:
        return resp.read().decode()


def sample(text: str, name: str, **labels: str) -> float:
    """The value of one sample of /metrics (0 when absent)."""
    want = "etcd_gateway_" + name
    for line in text.splitlines():
        if line.startswith("#") or not line.startswith(want):
            continue
        head, _, value = line.rpartition(" ")
        if head.split("{")[0] != want:
            continue
        if all(f'{k}="{v}"' in head for k, v in labels.items()):
            return float(value)
    return 0.0


def connections_total(gw) -> int:
    with urllib.request.urlopen(f"http://{gw.maddr}/endpoints", timeout=5) as resp:
        return sum(e["connections_total"] for e in json.loads(resp.read()))


def tls_client_context(pki, with_cert: bool) -> ssl.SSLContext:
    ctx = ssl.create_default_context(cafile=pki.ca.cert)
    if with_cert:
        ctx.load_cert_chain(pki.client.cert, pki.client.key)
    return ctx


# -- origination -------------------------------------------------------------------
def test_plain_etcdctl_through_the_gateway_reaches_a_tls_cluster(pki, tls_cluster,
                                                                  gateway_factory):
    gw = start(gateway_factory, originating(pki, tls_cluster), metrics=False)
    put = etcdctl("put", "/tls/key", "value-1", endpoint=gw.addr)
    assert put.returncode == 0, put.stderr
    got = etcdctl("get", "/tls/key", "--print-value-only", endpoint=gw.addr)
    assert got.stdout.strip() == "value-1", got.stderr
    direct = tls_cluster.etcdctl("get", "/tls/key", "--print-value-only",
                                 endpoints=tls_cluster.client_endpoints()[0])
    assert direct.stdout.strip() == "value-1", direct.stderr


def test_http_clients_and_grpc_clients_both_reach_a_tls_cluster(pki, tls_cluster,
                                                                gateway_factory):
    # etcd serves gRPC only over ALPN h2 and its HTTP handlers over HTTP/1.1: the
    # member leg must offer what each client speaks
    gw = start(gateway_factory, originating(pki, tls_cluster), metrics=False)
    with urllib.request.urlopen(f"http://{gw.addr}/health", timeout=10) as resp:
        assert json.loads(resp.read())["health"] == "true"
    assert EtcdCluster.member_id_of(gw.addr, timeout=10)
    status = etcdctl("endpoint", "status", "-w", "json", endpoint=gw.addr)
    assert status.returncode == 0, status.stderr


def test_an_http2_preface_split_across_packets_still_reaches_etcd_as_h2(
        pki, tls_cluster, gateway_factory):
    gw = start(gateway_factory, originating(pki, tls_cluster), metrics=False)
    preface = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
    settings = b"\x00\x00\x00\x04\x00\x00\x00\x00\x00"  # an empty SETTINGS frame
    with socket.create_connection(sockaddr(gw.addr), timeout=10) as sock:
        sock.sendall(preface[:2])
        time.sleep(0.3)  # the gateway has seen "PR": h2 or not is not known yet
        sock.sendall(preface[2:] + settings)
        head = _recv_exactly(sock, 9)
    assert len(head) == 9 and head[3] == 0x04, head  # etcd answered with HTTP/2 SETTINGS


def test_a_client_stalled_inside_the_h2_preface_is_looked_at_again_with_backoff(
        pki, gateway_factory, tmp_path):
    """"PR" and silence: h2 or not is unknown, so the gateway looks at the client's bytes
    again later, less and less often (not every 5 ms until its 10 s timeout)."""
    gw = start(gateway_factory, ["--endpoints", f"https://127.0.0.1:{free_port()}",
                                 "--cacert", pki.ca.cert, "--workers", "1",
                                 "--health-check", "none"], metrics=False)
    trace = tmp_path / "strace.out"
    with syscalls.traced(gw.worker_pids()[0], "recvfrom", trace):
        with socket.create_connection(sockaddr(gw.addr), timeout=10) as sock:
            sock.sendall(b"PR")
            time.sleep(2)  # the gateway waits for the rest of the first word
    peeks = syscalls.lines(trace, "MSG_PEEK")
    assert 1 <= len(peeks) <= 20, len(peeks)  # doubling from 5 ms: about 11 in 2 s


def test_a_large_value_crosses_both_tls_legs_intact(pki, tls_cluster, gateway_factory):
    gw = start(gateway_factory, [*originating(pki, tls_cluster), "--cert-file",
                                 pki.gateway.cert, "--key-file", pki.gateway.key],
               metrics=False)
    value = os.urandom(600_000).hex()  # 1.2 MB: many TLS records each way
    client_tls = [f"--cacert={pki.ca.cert}"]
    put = subprocess.run(
        ["etcdctl", f"--endpoints=https://{gw.addr}", f"--cacert={pki.ca.cert}",
         "--command-timeout=20s", "put", "/tls/large"], input=value, text=True,
        capture_output=True, timeout=60, env={**os.environ, "ETCDCTL_API": "3"})
    assert put.returncode == 0, put.stderr
    got = etcdctl("get", "/tls/large", "--print-value-only", endpoint=f"https://{gw.addr}",
                  tls=client_tls)
    assert got.stdout.strip() == value


def test_an_upload_half_closed_through_a_tls_member_comes_back_whole(pki, gateway_factory):
    """5 MB to an OpenSSL TLS echo member, then SHUT_WR: every byte echoed comes back
    before the end, whatever the member's TLS stack says about the gateway's FIN."""
    payload = bytes(range(256)) * (5 * 1024 * 1024 // 256)
    with socket.create_server(("127.0.0.1", 0)) as lsock:
        member = threading.Thread(target=_tls_echo_one, args=(pki, lsock), daemon=True)
        member.start()
        addr = f"127.0.0.1:{lsock.getsockname()[1]}"
        gw = start(gateway_factory, ["--endpoints", f"https://{addr}", "--cacert",
                                     pki.ca.cert, "--workers", "1", "--health-check",
                                     "none"], metrics=False)
        got = bytearray()
        with socket.create_connection(sockaddr(gw.addr), timeout=20) as sock:
            reader = threading.Thread(target=_read_to_end, args=(sock, got))
            reader.start()
            sock.sendall(payload)
            sock.shutdown(socket.SHUT_WR)
            reader.join(30)
        member.join(10)
        assert not reader.is_alive()
        assert len(got) == len(payload) and bytes(got) == payload


def test_a_member_signed_by_another_ca_is_refused(pki, tls_cluster, gateway_factory):
    args = originating(pki, tls_cluster)
    args[args.index("--cacert") + 1] = pki.other_ca.cert
    gw = start(gateway_factory, [*args, "--health-check", "none"])
    put = etcdctl("put", "/tls/refused", "x", endpoint=gw.addr)
    assert put.returncode != 0
    entry = gw.wait_log("deactivated endpoint", 10)
    assert "certificate verify failed" in entry["error"], entry
    assert sample(metrics_text(gw), "tls_handshake_failures_total", side="member",
                  reason="certificate") >= 1


def test_a_member_whose_certificate_names_another_host_is_refused(pki, gateway_factory):
    # a certificate from the right CA, but for other.example, not 127.0.0.1
    cert = pki_support.make_cert(pki.ca, pki.dir, "other.example", dns=("other.example",))
    with pki_support.TLSEchoServer(cert) as server:
        gw = start(gateway_factory, ["--endpoints", f"https://{server.addr}", "--cacert",
                                     pki.ca.cert, "--health-check", "none",
                                     "--workers", "1"])
        with socket.create_connection(sockaddr(gw.addr), timeout=10) as sock:
            sock.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
            try:
                data = sock.recv(100)
            except ConnectionResetError:
                data = b""
        assert data == b""
        entry = gw.wait_log("deactivated endpoint", 10)
        assert "mismatch" in entry["error"], entry
        assert server.accepted >= 1


def test_member_checks_speak_tls_with_the_client_certificate(pki, tls_cluster,
                                                            gateway_factory):
    gw = start(gateway_factory, [*originating(pki, tls_cluster), "--health-check", "etcd",
                                 "--health-check-interval", "200ms"])
    time.sleep(2)  # about ten rounds of checks of each member
    with urllib.request.urlopen(f"http://{gw.maddr}/endpoints", timeout=5) as resp:
        rows = json.loads(resp.read())
    assert [r["state"] for r in rows] == ["up"] * 3
    assert sum(r["health_check_failures_total"] for r in rows) == 0


def test_member_checks_without_the_client_certificate_take_members_out(
        pki, tls_cluster, gateway_factory):
    # the members require a client certificate: checks that did not present one fail
    gw = start(gateway_factory, ["--endpoints", https_endpoints(tls_cluster), "--cacert",
                                 pki.ca.cert, "--health-check", "etcd",
                                 "--health-check-interval", "200ms", "--health-check-fall",
                                 "1", "--workers", "1"])
    entry = gw.wait_log("deactivated endpoint", 15,
                        predicate=lambda e: "health check" in e.get("reason", ""))
    assert "https://" in entry["error"] or "TLS" in entry["error"], entry


def test_discovery_srv_tls_dials_the_ssl_members_with_tls_verified_by_name(pki, tmp_path,
                                                                        gateway_factory):
    # the member's certificate names m1.example.test only: the SRV target is the name
    # checked, and the client speaks plain text to the gateway
    cert = pki_support.make_cert(pki.ca, tmp_path, "m1.example.test",
                                 dns=("m1.example.test",))
    with Dnsmasq(tmp_path / "dns", "example.test") as dns, \
            pki_support.TLSEchoServer(cert) as member:
        dns.set_records({"m1.example.test": "127.0.0.1"}, [
            ("_etcd-client-ssl._tcp.example.test", "m1.example.test", member.port, 0, 1)])
        gw = start(gateway_factory, ["--discovery-srv", "example.test",
                                     "--discovery-srv-resolver", dns.addr,
                                     "--discovery-srv-refresh", "0", "--discovery-srv-tls",
                                     "--cacert", pki.ca.cert, "--health-check", "none",
                                     "--workers", "1"])
        before = member.handshakes
        with socket.create_connection(sockaddr(gw.addr), timeout=10) as sock:
            sock.sendall(b"plain in, TLS out")
            assert _recv_exactly(sock, 17) == b"plain in, TLS out"
        assert member.handshakes > before
        assert sample(metrics_text(gw), "tls_handshakes_total", side="member") == 1


# -- termination -------------------------------------------------------------------
def test_termination_serves_tls_clients_without_client_certificates(pki, gateway_factory):
    with EchoServer() as echo:
        gw = start(gateway_factory, ["--endpoints", echo.addr, "--cert-file",
                                     pki.gateway.cert, "--key-file", pki.gateway.key,
                                     "--workers", "1"])
        ctx = tls_client_context(pki, with_cert=False)
        with socket.create_connection(sockaddr(gw.addr), timeout=10) as raw:
            with ctx.wrap_socket(raw, server_hostname="127.0.0.1") as sock:
                sock.sendall(b"hello through TLS")
                assert _recv_exactly(sock, 17) == b"hello through TLS"
        assert sample(metrics_text(gw), "tls_handshakes_total", side="client") >= 1


def test_termination_and_origination_reencrypt_for_etcdctl(pki, tls_cluster,
                                                           gateway_factory):
    gw = start(gateway_factory, [*originating(pki, tls_cluster), "--cert-file",
                                 pki.gateway.cert, "--key-file", pki.gateway.key])
    put = etcdctl("put", "/tls/reencrypted", "v", endpoint=f"https://{gw.addr}",
                  tls=[f"--cacert={pki.ca.cert}"])
    assert put.returncode == 0, put.stderr
    text = metrics_text(gw)
    assert sample(text, "tls_handshakes_total", side="client") >= 1
    assert sample(text, "tls_handshakes_total", side="member") >= 1


def test_client_cert_auth_refuses_a_client_without_a_certificate(pki, tls_cluster,
                                                                 gateway_factory):
    gw = start(gateway_factory, [*originating(pki, tls_cluster), "--cert-file",
                                 pki.gateway.cert, "--key-file", pki.gateway.key,
                                 "--client-cert-auth", "--client-ca-file", pki.ca.cert,
                                 "--log-level", "debug"])
    before = connections_total(gw)
    refused = etcdctl("put", "/tls/no-cert", "v", endpoint=f"https://{gw.addr}",
                      tls=[f"--cacert={pki.ca.cert}"], timeout=30)
    assert refused.returncode != 0
    assert sample(metrics_text(gw), "tls_handshake_failures_total", side="client",
                  reason="no-certificate") >= 1
    assert connections_total(gw) == before  # no member was dialled for it
    entry = gw.wait_log("client TLS handshake failed", 5)
    assert entry["level"] == "debug"


def test_client_cert_auth_admits_a_client_with_a_certificate(pki, tls_cluster,
                                                             gateway_factory):
    gw = start(gateway_factory, [*originating(pki, tls_cluster), "--cert-file",
                                 pki.gateway.cert, "--key-file", pki.gateway.key,
                                 "--client-cert-auth", "--client-ca-file", pki.ca.cert])
    put = etcdctl("put", "/tls/with-cert", "v", endpoint=f"https://{gw.addr}",
                  tls=[f"--cacert={pki.ca.cert}", f"--cert={pki.client.cert}",
                       f"--key={pki.client.key}"])
    assert put.returncode == 0, put.stderr


def test_a_client_that_is_not_tls_is_closed_and_counted(pki, gateway_factory):
    with EchoServer() as echo:
        gw = start(gateway_factory, ["--endpoints", echo.addr, "--cert-file",
                                     pki.gateway.cert, "--key-file", pki.gateway.key,
                                     "--workers", "1",
                                     "--health-check", "none"])  # only clients reach it
        with socket.create_connection(sockaddr(gw.addr), timeout=10) as sock:
            sock.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
            try:
                while sock.recv(4096):
                    pass
            except ConnectionResetError:
                pass
        wait_until(lambda: sample(metrics_text(gw), "tls_handshake_failures_total",
                                  side="client", reason="protocol") >= 1, 5,
                   "a protocol failure counted")
        assert echo.accepted == 0


# -- rotation ----------------------------------------------------------------------
class _Rotation:
    """The gateway's serving certificate files, and a second certificate to put there."""

    def __init__(self, pki, tmp_path):
        self.cert = str(tmp_path / "serving.crt")
        self.key = str(tmp_path / "serving.key")
        shutil.copy(pki.gateway.cert, self.cert)
        shutil.copy(pki.gateway.key, self.key)
        self.first = pki_support.serial_of(self.cert)
        renewed = pki_support.make_cert(pki.ca, tmp_path, "gateway", ips=("127.0.0.1",),
                                        tag="renewed")
        self.renewed = renewed
        self.second = pki_support.serial_of(renewed.cert)
        assert self.first != self.second

    def renew(self) -> None:
        """Replace both files the way a renewal tool does: new files renamed over."""
        for src, dst in ((self.renewed.key, self.key), (self.renewed.cert, self.cert)):
            shutil.copy(src, dst + ".new")
            os.replace(dst + ".new", dst)


def _open_keepalive(pki, gw) -> http.client.HTTPSConnection:
    conn = http.client.HTTPSConnection(gw.addr.split(":")[0], int(gw.addr.split(":")[1]),
                                       context=tls_client_context(pki, with_cert=False),
                                       timeout=10)
    conn.request("GET", "/health")
    resp = conn.getresponse()
    assert resp.status == 200 and b'"health":"true"' in resp.read()
    return conn


def _still_serves(conn: http.client.HTTPSConnection, sock) -> None:
    """The connection opened before the rotation answers again, on the same socket."""
    conn.request("GET", "/health")
    resp = conn.getresponse()
    assert resp.status == 200 and b'"health":"true"' in resp.read()
    assert conn.sock is sock


def _peer_serial(sock) -> str:
    return sock.getpeercert()["serialNumber"]


def test_sighup_rotates_the_serving_certificate_and_keeps_open_connections(
        pki, tls_cluster, gateway_factory, tmp_path):
    rot = _Rotation(pki, tmp_path)
    gw = start(gateway_factory, [*originating(pki, tls_cluster), "--cert-file", rot.cert,
                                 "--key-file", rot.key, "--tls-reload-interval", "0"])
    assert pki_support.presented_serial(gw.addr, pki.ca.cert) == rot.first
    conn = _open_keepalive(pki, gw)
    sock = conn.sock
    assert _peer_serial(sock) == rot.first
    rot.renew()
    gw.signal(signal.SIGHUP)
    gw.wait_log("reloaded", 10)
    wait_until(lambda: pki_support.presented_serial(gw.addr, pki.ca.cert) == rot.second,
               10, "the renewed certificate presented to new connections")
    _still_serves(conn, sock)
    assert _peer_serial(sock) == rot.first
    conn.close()


def test_a_changed_file_is_picked_up_without_a_signal(pki, tls_cluster, gateway_factory,
                                                      tmp_path):
    rot = _Rotation(pki, tmp_path)
    gw = start(gateway_factory, [*originating(pki, tls_cluster), "--cert-file", rot.cert,
                                 "--key-file", rot.key, "--tls-reload-interval", "300ms"])
    conn = _open_keepalive(pki, gw)
    sock = conn.sock
    rot.renew()
    gw.wait_log("TLS files changed: re-read", 10)
    wait_until(lambda: pki_support.presented_serial(gw.addr, pki.ca.cert) == rot.second,
               10, "the renewed certificate presented to new connections")
    _still_serves(conn, sock)
    assert _peer_serial(sock) == rot.first
    conn.close()


def test_a_bad_file_at_reload_keeps_the_certificate_in_use(pki, gateway_factory, tmp_path):
    rot = _Rotation(pki, tmp_path)
    with EchoServer() as echo:
        gw = start(gateway_factory, ["--endpoints", echo.addr, "--cert-file", rot.cert,
                                     "--key-file", rot.key, "--tls-reload-interval",
                                     "300ms", "--workers", "1"])
        with open(rot.cert, "w") as f:
            f.write("not a certificate\n")
        entry = gw.wait_log("TLS files changed but cannot be used; keeping the ones in use",
                            10)
        assert "--cert-file" in entry["error"]
        gw.signal(signal.SIGHUP)
        failed = gw.wait_log("reload failed; keeping the running configuration", 10)
        assert "--cert-file" in failed["error"]
        assert pki_support.presented_serial(gw.addr, pki.ca.cert) == rot.first
        assert gw.count_log("TLS files changed but cannot be used; keeping the ones in use") == 1


def test_a_reload_to_tls_members_not_known_yet_is_refused_and_plain_ones_keep_serving(
        pki, gateway_factory, tmp_path):
    """Plain members, then a reload to https:// names that do not resolve yet: the
    running members would be dialled with TLS, so the reload is refused whole."""
    with EchoServer() as echo, PrivateResolution(tmp_path / "resolution") as resolution:
        name = resolution.name("newmember")
        conf = tmp_path / "gateway.conf"
        conf.write_text(f"endpoints = {echo.addr}\n")
        addr = f"127.0.0.1:{free_port()}"
        gw = gateway_factory(["-c", str(conf), "--listen-addr", addr, "--workers", "1",
                              "--health-check", "tcp"], prefix=resolution.prefix())
        assert echo_once(addr, b"before") == b"before"
        conf.write_text(f"endpoints = https://{name}:{free_port()}\n"
                        f"cacert = {pki.ca.cert}\n")
        gw.signal(signal.SIGHUP)
        failed = gw.wait_log("reload failed; keeping the running configuration", 10)
        assert "--endpoints" in failed["error"] and "plain to TLS" in failed["error"]
        for i in range(4):
            payload = f"after {i}".encode()
            assert echo_once(addr, payload) == payload
        assert gw.find_logs("deactivated endpoint") == []
        assert gw.count_log("reloaded") == 0


def test_a_tls_file_that_becomes_a_fifo_is_refused_and_the_master_still_obeys_sigterm(
        pki, gateway_factory, tmp_path):
    rot = _Rotation(pki, tmp_path)
    with EchoServer() as echo:
        gw = start(gateway_factory, ["--endpoints", echo.addr, "--cert-file", rot.cert,
                                     "--key-file", rot.key, "--tls-reload-interval",
                                     "300ms", "--workers", "1", "--health-check", "tcp"])
        os.remove(rot.cert)
        os.mkfifo(rot.cert)  # nobody ever writes to it: a blocking open never returns
        entry = gw.wait_log("TLS files changed but cannot be used; keeping the ones in use",
                            10)
        assert "--cert-file" in entry["error"] and "not a regular file" in entry["error"]
        gw.signal(signal.SIGHUP)
        failed = gw.wait_log("reload failed; keeping the running configuration", 10)
        assert "not a regular file" in failed["error"]
        assert pki_support.presented_serial(gw.addr, pki.ca.cert) == rot.first
        gw.signal(signal.SIGTERM)
        assert gw.wait(15) == 0


# -- bad input ---------------------------------------------------------------------
@pytest.fixture(scope="module")
def bad_files(pki, tmp_path_factory):
    d = tmp_path_factory.mktemp("bad")
    expired = pki_support.make_cert(pki.ca, d, "expired", ips=("127.0.0.1",), days=-1)
    garbage = d / "garbage.pem"
    garbage.write_text("-----BEGIN CERTIFICATE-----\nnot base64\n-----END CERTIFICATE-----\n")
    return {"expired": expired, "garbage": str(garbage), "missing": str(d / "missing.crt")}


@pytest.mark.parametrize("case, expect", [
    ("missing cert-file", ["--cert-file", "missing.crt", "No such file"]),
    ("garbage cert-file", ["--cert-file", "not a PEM certificate"]),
    ("mismatched key-file", ["--key-file", "does not match"]),
    ("expired cert-file", ["--cert-file", "expired"]),
    ("client-cert-auth without CA", ["--client-cert-auth", "--client-ca-file"]),
    ("cert without key", ["--cert", "needs --key"]),
    ("missing cacert", ["--cacert", "missing.crt"]),
])
def test_bad_tls_input_is_one_line_and_exit_2(pki, bad_files, case, expect):
    listen = f"127.0.0.1:{free_port()}"
    base = ["--listen-addr", listen, "--endpoints", "127.0.0.1:2379"]
    https = ["--listen-addr", listen, "--endpoints", "https://127.0.0.1:2379"]
    g = pki.gateway
    args = {
        "missing cert-file": [*base, "--cert-file", bad_files["missing"], "--key-file", g.key],
        "garbage cert-file": [*base, "--cert-file", bad_files["garbage"], "--key-file", g.key],
        "mismatched key-file": [*base, "--cert-file", g.cert, "--key-file", pki.client.key],
        "expired cert-file": [*base, "--cert-file", bad_files["expired"].cert,
                              "--key-file", bad_files["expired"].key],
        "client-cert-auth without CA": [*base, "--cert-file", g.cert, "--key-file", g.key,
                                        "--client-cert-auth"],
        "cert without key": [*https, "--cert", pki.client.cert],
        "missing cacert": [*https, "--cacert", bad_files["missing"]],
    }[case]
    res = run_gateway(args, timeout=20)
    assert res.returncode == 2, res.stderr
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1, res.stderr
    for word in expect:
        assert word in lines[0], lines[0]
    assert "Traceback" not in res.stderr


def test_check_config_makes_the_same_tls_checks(pki):
    args = ["--check-config", "--endpoints", "127.0.0.1:2379", "--cert-file", pki.gateway.cert,
            "--key-file", pki.client.key]
    res = run_gateway(args, timeout=20)
    assert res.returncode == 2
    assert "--key-file" in res.stderr and "does not match" in res.stderr
    args[-1] = pki.gateway.key
    res = run_gateway(args, timeout=20)
    assert res.returncode == 0, res.stderr
    assert "configuration is valid" in res.stdout


def test_mixing_https_and_plain_endpoints_is_refused():
    res = run_gateway(["--endpoints", "https://127.0.0.1:2379,127.0.0.1:2380"], timeout=20)
    assert res.returncode == 2
    assert "--endpoints" in res.stderr and "mixes https://" in res.stderr


# -- metrics and status ------------------------------------------------------------
def test_status_and_metrics_show_each_certificate_expiry(pki, tls_cluster, gateway_factory):
    gw = start(gateway_factory, [*originating(pki, tls_cluster), "--cert-file",
                                 pki.gateway.cert, "--key-file", pki.gateway.key])
    text = metrics_text(gw)
    serial = pki_support.serial_of(pki.gateway.cert)
    assert sample(text, "tls_certificate_expiry_timestamp_seconds", option="cert-file",
                  serial=serial) > 0
    assert sample(text, "tls_certificate_expiry_timestamp_seconds", option="cert") > 0
    res = run_gateway(["status", "--metrics-addr", gw.maddr], timeout=20)
    assert res.returncode == 0, res.stderr
    rows = [line for line in res.stdout.splitlines() if line.startswith("--cert-file")]
    assert len(rows) == 1 and serial in rows[0] and "(in 1d)" in rows[0], res.stdout


# -- helpers -----------------------------------------------------------------------
def sockaddr(addr: str) -> tuple[str, int]:
    host, port = addr.rsplit(":", 1)
    return host, int(port)


def _recv_exactly(sock, n: int) -> bytes:
    data = b""
    while len(data) < n:
        chunk = sock.recv(n - len(data))
        if not chunk:
            break
        data += chunk
    return data


def _read_to_end(sock, into: bytearray) -> None:
    """Read until EOF (or a reset, which leaves `into` short)."""
    try:
        while data := sock.recv(65536):
            into.extend(data)
    except OSError:
        pass


def _tls_echo_one(pki, lsock: socket.socket) -> None:
    """An echo member on Python's ssl (OpenSSL 3, which calls a FIN without close_notify
    an error): one connection, blocking, echoing each read before the next."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(pki.member.cert, pki.member.key)
    lsock.settimeout(20)
    conn, _ = lsock.accept()
    conn.settimeout(20)
    try:
        with ctx.wrap_socket(conn, server_side=True) as tls:
            while data := tls.recv(65536):
                tls.sendall(data)
    except OSError:  # the gateway's bare FIN: "EOF occurred in violation of protocol"
        pass
