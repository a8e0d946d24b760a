"""gateway.srv against a real dnsmasq and real TLS servers (openssl-made PKI), 127.0.0.1 only.

Names under .test are reserved (RFC 2606), so the system resolver cannot know them:
every target that resolves here was resolved through the dnsmasq given as resolver.
"""
from __future__ import annotations

import logging
import shutil
import socket
import ssl
import subprocess
import time

import pytest

from gateway import srv
from gateway.addresses import HostPort
from gateway.endpoints import Endpoint
from tests.support.dns import BlackholeDNS, Dnsmasq
from tests.support.echo import HungListener, dead_addr
from tests.support.ports import free_ports
from tests.support.tls import Pki, TLSEchoServer
from tests.support.clients import wait_until

pytestmark = pytest.mark.integration

D = "example.test"
SSL = f"_etcd-client-ssl._tcp.{D}"
PLAIN = f"_etcd-client._tcp.{D}"
T = 2.0  # discover/validate timeout against live local servers


def _dead_port() -> int:
    return int(dead_addr().rsplit(":", 1)[1])


def _servers(*dns_servers) -> tuple[HostPort, ...]:
    return tuple(HostPort("127.0.0.1", s.port) for s in dns_servers)


@pytest.fixture(scope="module")
def pki(tmp_path_factory) -> Pki:
    return Pki(tmp_path_factory.mktemp("pki"))


@pytest.fixture(scope="module")
def tls_servers(pki):
    """good: b1 cert from the trusted CA; other_ca: b2 cert from an unrelated CA;
    wrong_name: a trusted-CA cert for another name, served where DNS says b3."""
    made = {}
    try:
        made["good"] = TLSEchoServer(pki.server(f"b1.{D}"))
        made["other_ca"] = TLSEchoServer(pki.server(f"b2.{D}", other_ca=True))
        made["wrong_name"] = TLSEchoServer(pki.server(f"elsewhere.{D}"))
        yield made
    finally:
        for s in made.values():
            s.stop()


@pytest.fixture(scope="module")
def dnsmasq(tmp_path_factory):
    with Dnsmasq(tmp_path_factory.mktemp("dnsmasq"), D) as dm:
        yield dm


def test_name_suffix_selects_the_srv_names(dnsmasq, tls_servers, pki):
    good = tls_servers["good"]
    other_port = _dead_port()
    dnsmasq.set_records({f"b1.{D}": "127.0.0.1"}, [
        (f"_etcd-client-ssl-prod._tcp.{D}", f"b1.{D}", good.port, 0, 0),
        (SSL, f"b1.{D}", other_port, 0, 0)])
    resolver = srv.make_resolver(_servers(dnsmasq), T)

    recs, errors = srv.lookup(resolver, D, "prod", insecure=False)
    assert [r.port for r in recs] == [good.port]
    recs, _ = srv.lookup(resolver, D, "", insecure=False)
    assert [r.port for r in recs] == [other_port]

    d = srv.discover(D, "prod", False, pki.ca.cert, _servers(dnsmasq), T)
    assert [ep.port for ep in d.endpoints] == [good.port]


def test_plain_records_refused_without_insecure_discovery_and_used_with_it(dnsmasq):
    port = _dead_port()  # nothing listens: with the flag it is used as is, unchecked
    dnsmasq.set_records({f"b1.{D}": "127.0.0.1"}, [(PLAIN, f"b1.{D}", port, 0, 0)])

    d = srv.discover(D, "", False, "", _servers(dnsmasq), T)
    assert d.endpoints == []
    assert f"ignored 1 plain-text records ({PLAIN}): --insecure-discovery not set" in d.errors
    assert any(SSL in e and "NXDOMAIN" in e for e in d.errors)

    d = srv.discover(D, "", True, "", _servers(dnsmasq), T)
    assert d.endpoints == [Endpoint(f"b1.{D}:{port}", socket.AF_INET, "127.0.0.1", port)]
    assert not any("ignored" in e for e in d.errors)


def test_targets_resolved_by_the_same_resolver_with_priority_and_weight(dnsmasq):
    dnsmasq.set_records({f"b1.{D}": "127.0.0.1", f"b6.{D}": "::1"}, [
        (PLAIN, f"b6.{D}", 2222, 20, 0),
        (PLAIN, f"b1.{D}", 1111, 10, 5),
        (PLAIN, "127.0.0.3", 3333, 30, 7),           # IP-literal target: no lookup
        (PLAIN, f"missing.{D}", 4444, 10, 0),
        (SSL, f"b1.{D}", 1111, 10, 5)])              # same member under both names
    d = srv.discover(D, "", True, "", _servers(dnsmasq), T)
    assert d.endpoints == [
        Endpoint(f"b1.{D}:1111", socket.AF_INET, "127.0.0.1", 1111, 10, 5),
        Endpoint(f"b6.{D}:2222", socket.AF_INET6, "::1", 2222, 20, 0),
        Endpoint("127.0.0.3:3333", socket.AF_INET, "127.0.0.3", 3333, 30, 7)]
    assert d.errors == [f"resolve SRV target missing.{D}: no such name (NXDOMAIN)"]

    # records change (dnsmasq restarted): the next discovery sees the new set, no cache
    dnsmasq.set_records({f"b1.{D}": "127.0.0.9"}, [(PLAIN, f"b1.{D}.", 1111, 1, 2)])
    d = srv.discover(D, "", True, "", _servers(dnsmasq), T)
    assert d.endpoints == [Endpoint(f"b1.{D}:1111", socket.AF_INET, "127.0.0.9", 1111, 1, 2)]


def test_secure_records_kept_only_after_tls_validation(dnsmasq, tls_servers, pki, caplog):
    good, other_ca, wrong = (tls_servers[k] for k in ("good", "other_ca", "wrong_name"))
    dnsmasq.set_records({f"b{i}.{D}": "127.0.0.1" for i in (1, 2, 3)}, [
        (SSL, f"b1.{D}", good.port, 10, 1),
        (SSL, f"b2.{D}", other_ca.port, 10, 1),
        (SSL, f"b3.{D}", wrong.port, 10, 1)])
    before = good.handshakes
    caplog.set_level(logging.INFO, logger="etcd-gatewayd.srv")

    d = srv.discover(D, "", False, pki.ca.cert, _servers(dnsmasq), T)

    assert d.endpoints == [Endpoint(f"b1.{D}:{good.port}", socket.AF_INET, "127.0.0.1",
                                    good.port, 10, 1)]
    assert len(d.errors) == 2, d.errors
    b2 = next(e for e in d.errors if f"b2.{D}" in e)
    assert "certificate verify failed" in b2
    b3 = next(e for e in d.errors if f"b3.{D}" in e)
    assert "Hostname mismatch" in b3 and "certificate verify failed" in b3
    wait_until(lambda: good.handshakes > before, 5, "no TLS handshake happened")

    msgs = [(r.getMessage(), getattr(r, "fields", {})) for r in caplog.records]
    failed = [f for m, f in msgs if m == "failed to validate discovered endpoints"]
    assert len(failed) == 2 and all(f["srv-server"] == D for f in failed)
    assert ("discovered cluster from SRV",
            {"srv-server": D, "endpoints": [f"b1.{D}:{good.port}", f"b2.{D}:{other_ca.port}",
                                            f"b3.{D}:{wrong.port}"]}) in msgs
    assert ("using validated discovered SRV endpoints",
            {"endpoints": [f"b1.{D}:{good.port}"]}) in msgs

    # without --trusted-ca-file the system CAs are used: our private CA is not among them
    d = srv.discover(D, "", False, "", _servers(dnsmasq), T)
    assert d.endpoints == [] and len(d.errors) == 3


def test_member_that_requires_client_certs_still_validates(pki):
    server = TLSEchoServer(pki.server(f"b1.{D}"), require_client_cert=True,
                           client_ca=pki.ca.cert)
    try:
        ep = Endpoint(f"b1.{D}:{server.port}", socket.AF_INET, "127.0.0.1", server.port)
        assert srv.validate_tls(ep, f"b1.{D}", pki.ca.cert, T) is None
    finally:
        server.stop()


@pytest.mark.skipif(shutil.which("etcd") is None, reason="etcd not installed")
@pytest.mark.parametrize("tls12", [False, True], ids=["tls1.3", "tls1.2"])
def test_real_etcd_with_client_cert_auth_validates(tmp_path, pki, monkeypatch, tls12):
    """A real etcd member with --client-cert-auth: the gateway has no client cert.
    Over TLS 1.2 Go answers our empty certificate with a bad_certificate alert, which
    comes only after we verified the member, so the member counts as validated; a
    wrong name or CA still fails."""
    client, peer = free_ports(2)
    c = pki.server(f"b1.{D}")
    with open(tmp_path / "etcd.log", "wb") as out:
        proc = subprocess.Popen(
            ["etcd", "--name=m", f"--data-dir={tmp_path / 'data'}",
             f"--listen-client-urls=https://127.0.0.1:{client}",
             f"--advertise-client-urls=https://127.0.0.1:{client}",
             f"--listen-peer-urls=http://127.0.0.1:{peer}",
             f"--initial-advertise-peer-urls=http://127.0.0.1:{peer}",
             f"--initial-cluster=m=http://127.0.0.1:{peer}",
             f"--cert-file={c.cert}", f"--key-file={c.key}",
             f"--trusted-ca-file={pki.ca.cert}", "--client-cert-auth"],
            stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
            start_new_session=True)
    try:
        def listening() -> bool:
            try:
                socket.create_connection(("127.0.0.1", client), 0.2).close()
                return True
            except OSError:
                return False
        wait_until(listening, 15, "etcd did not listen")
        if tls12:
            real = ssl.create_default_context

            def capped(*a, **kw):
                ctx = real(*a, **kw)
                ctx.maximum_version = ssl.TLSVersion.TLSv1_2
                return ctx
            monkeypatch.setattr(ssl, "create_default_context", capped)
        ep = Endpoint(f"b1.{D}:{client}", socket.AF_INET, "127.0.0.1", client)
        assert srv.validate_tls(ep, f"b1.{D}", pki.ca.cert, T) is None
        assert "Hostname mismatch" in srv.validate_tls(ep, f"b9.{D}", pki.ca.cert, T)
        assert "certificate verify failed" in srv.validate_tls(ep, f"b1.{D}",
                                                               pki.other_ca.cert, T)
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)
    if tls12:
        assert "client didn't provide a certificate" in (tmp_path / "etcd.log").read_text()


def test_validate_tls_refused_and_timeout_are_errors_within_bound(pki):
    port = _dead_port()
    ep = Endpoint(f"b1.{D}:{port}", socket.AF_INET, "127.0.0.1", port)
    err = srv.validate_tls(ep, f"b1.{D}", pki.ca.cert, T)
    assert err is not None and "connection refused" in err

    with HungListener() as hung:  # connects neither complete nor get refused
        ep = Endpoint(f"b1.{D}:{hung.port}", socket.AF_INET, "127.0.0.1", hung.port)
        t0 = time.monotonic()
        err = srv.validate_tls(ep, f"b1.{D}", pki.ca.cert, 0.5)
        elapsed = time.monotonic() - t0
    assert err is not None and "timed out after 0.5s" in err
    assert elapsed < 1.5


def test_tls_server_that_never_answers_the_handshake_times_out(pki):
    """Connect succeeds, the ClientHello is never answered: handshake bounded too."""
    lsock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    lsock.bind(("127.0.0.1", 0))
    lsock.listen(4)
    try:
        port = lsock.getsockname()[1]
        ep = Endpoint(f"b1.{D}:{port}", socket.AF_INET, "127.0.0.1", port)
        t0 = time.monotonic()
        err = srv.validate_tls(ep, f"b1.{D}", pki.ca.cert, 0.5)
        assert time.monotonic() - t0 < 1.5
        assert err is not None and "handshake timed out" in err
    finally:
        lsock.close()


def test_lookup_timeout_is_an_error_within_bound():
    with BlackholeDNS() as hole:
        t0 = time.monotonic()
        d = srv.discover(D, "", False, "", _servers(hole), 0.5)
        elapsed = time.monotonic() - t0
        assert d.endpoints == []
        assert len(d.errors) == 1 and SSL in d.errors[0] and "timed out after 0.5s" in d.errors[0]
        assert hole.addr in d.errors[0]
        assert elapsed < 1.5  # the plain name is not asked after the secure one timed out

        t0 = time.monotonic()
        d = srv.discover(D, "", True, "", _servers(hole), 0.5)
        elapsed = time.monotonic() - t0
        assert d.endpoints == [] and len(d.errors) == 2
        assert all("timed out" in e for e in d.errors)
        assert elapsed < 2.5


def test_dead_first_resolver_falls_through_to_the_next(dnsmasq):
    dnsmasq.set_records({f"b1.{D}": "127.0.0.1"}, [(PLAIN, f"b1.{D}", 1111, 0, 0)])
    with BlackholeDNS() as hole:
        # each of the 3 queries (2 SRV names, 1 target) gives the dead server its
        # share (timeout / 2) of the lifetime, then gets the answer from dnsmasq
        t0 = time.monotonic()
        d = srv.discover(D, "", True, "", _servers(hole, dnsmasq), 1.0)
        assert time.monotonic() - t0 < 3 * 1.0 + 1
    assert [ep.port for ep in d.endpoints] == [1111]


@pytest.mark.parametrize("mode,rcode", [("servfail", "SERVFAIL"), ("refused", "REFUSED")])
def test_servfail_and_refused_are_errors_not_exceptions(tmp_path, mode, rcode):
    with Dnsmasq(tmp_path / mode, D, mode=mode) as dm:
        dm.set_records({f"b1.{D}": "127.0.0.1"}, [(SSL, f"b1.{D}", 1111, 0, 0),
                                                   (PLAIN, f"b1.{D}", 2222, 0, 0)])
        t0 = time.monotonic()
        d = srv.discover(D, "", True, "", _servers(dm), T)
        assert time.monotonic() - t0 < 2 * T + 1
    assert d.endpoints == []
    assert len(d.errors) == 2
    assert all(rcode in e for e in d.errors), d.errors
