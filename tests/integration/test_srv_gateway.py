"""DNS SRV discovery end to end: the real gateway binary, a real dnsmasq, real backends.

Every member is on 127.0.0.1 and is named in DNS (`mN.example.test`, resolved by the
same dnsmasq the gateway is pointed at with --discovery-srv-resolver), so a member is
told apart by its port. Backend counts are read with `--health-check none` (the default
tcp checks would add connects of their own); where members must come back after a
failure, re-admission is the single TCP connect of mode none after `--retry-delay`.
Periodic refresh is off (`--discovery-srv-refresh 0`) unless a test is about it, so a
refresh happens only when a test asks for one.
"""
from __future__ import annotations

import signal
import socket
import ssl
import time

import pytest

from tests.support.dns import BlackholeDNS, Dnsmasq
from tests.support.echo import EchoServer
from tests.support.gateway_proc import run_gateway
from tests.support.ports import free_port
from tests.support.tls import Pki, TLSEchoServer
from tests.support.clients import echo_once, roundtrip, wait_until

pytestmark = pytest.mark.integration

D = "example.test"
PLAIN = f"_etcd-client._tcp.{D}"
SSL = f"_etcd-client-ssl._tcp.{D}"
KEEPING = "SRV refresh found nothing usable; keeping the last good set"


# -- helpers -------------------------------------------------------------------------
def host(n: int) -> str:
    return f"m{n}.{D}"


def hosts(*ns: int) -> dict[str, str]:
    return {host(n): "127.0.0.1" for n in ns}


def _split(addr: str) -> tuple[str, int]:
    h, p = addr.rsplit(":", 1)
    return h, int(p)




def echo_many(addr: str, n: int, tag: str = "c") -> None:
    """n sequential clients, each must get its own bytes back (no client errors)."""
    for i in range(n):
        payload = f"{tag}{i}".encode()
        assert echo_once(addr, payload) == payload




def srv_args(dm: Dnsmasq, listen: str, *extra: str, refresh: str = "0",
             health: str = "none") -> list[str]:
    return ["--listen-addr", listen, "--discovery-srv", D,
            "--discovery-srv-resolver", dm.addr, "--discovery-srv-refresh", refresh,
            "--health-check", health, *extra]


def start_gateway(gateway_factory, dm: Dnsmasq, *extra: str, **kw):
    listen = f"127.0.0.1:{free_port()}"
    gw = gateway_factory(srv_args(dm, listen, *extra, **kw))
    gw.addr = listen
    return gw


# -- fixtures ------------------------------------------------------------------------
@pytest.fixture
def dm(tmp_path):
    with Dnsmasq(tmp_path / "dnsmasq", D) as server:
        yield server


@pytest.fixture(scope="module")
def pki(tmp_path_factory) -> Pki:
    return Pki(tmp_path_factory.mktemp("pki"))


# -- names ---------------------------------------------------------------------------
def test_discovery_srv_name_selects_the_suffixed_records(gateway_factory, dm):
    with EchoServer() as named, EchoServer() as unnamed:
        dm.set_records(hosts(1, 2), [
            (f"_etcd-client-prod._tcp.{D}", host(1), named.port, 0, 1),
            (PLAIN, host(2), unnamed.port, 0, 1),
        ])
        gw = start_gateway(gateway_factory, dm, "--insecure-discovery",
                           "--discovery-srv-name", "prod")
        assert gw.wait_log("discovered cluster from SRV", 1)["endpoints"] == [
            f"{host(1)}:{named.port}"]
        assert gw.wait_log("ready to proxy client requests", 1)["endpoints"] == [named.addr]
        echo_many(gw.addr, 10)
        assert (named.accepted, unnamed.accepted) == (10, 0)


def test_plain_records_without_insecure_discovery_are_fatal_with_no_fallback(dm):
    with EchoServer() as static:
        with EchoServer() as plain:
            dm.set_records(hosts(1), [(PLAIN, host(1), plain.port, 0, 1)])
            began = time.monotonic()
            res = run_gateway(["--listen-addr", f"127.0.0.1:{free_port()}",
                               "--discovery-srv", D, "--discovery-srv-resolver", dm.addr,
                               "--health-check", "none", "--endpoints", static.addr],
                              timeout=20)
            elapsed = time.monotonic() - began
            assert plain.accepted == 0
        assert res.returncode != 0, res.stderr
        lines = res.stderr.strip().splitlines()
        assert len(lines) == 1, res.stderr
        assert "--discovery-srv" in lines[0]
        assert "--insecure-discovery not set" in lines[0]
        assert PLAIN in lines[0]
        assert elapsed < 10
        assert static.accepted == 0  # never fell back to --endpoints


def test_srv_members_replace_endpoints_and_the_log_says_so(gateway_factory, dm):
    with EchoServer() as member, EchoServer() as static:
        dm.set_records(hosts(1), [(PLAIN, host(1), member.port, 0, 1)])
        gw = start_gateway(gateway_factory, dm, "--insecure-discovery",
                           "--endpoints", static.addr)
        line = gw.wait_log("ignoring --endpoints: using the members found by SRV discovery", 1)
        assert line["endpoints"] == [static.addr]
        assert gw.wait_log("ready to proxy client requests", 1)["endpoints"] == [member.addr]
        echo_many(gw.addr, 10)
        assert (member.accepted, static.accepted) == (10, 0)


# -- RFC 2782 selection --------------------------------------------------------------
def test_priority_classes_fail_over_and_return(gateway_factory, dm):
    a1, a2, b = EchoServer().start(), EchoServer().start(), EchoServer().start()
    servers = [a1, a2, b]
    try:
        dm.set_records(hosts(1, 2, 3), [
            (PLAIN, host(1), a1.port, 10, 1),
            (PLAIN, host(2), a2.port, 10, 1),
            (PLAIN, host(3), b.port, 20, 1),
        ])
        gw = start_gateway(gateway_factory, dm, "--insecure-discovery",
                           "--retry-delay", "1s", "--dial-timeout", "500ms")
        # class 10 takes everything, shared by its two members
        echo_many(gw.addr, 20, "first")
        assert a1.accepted + a2.accepted == 20 and b.accepted == 0
        assert a1.accepted > 0 and a2.accepted > 0
        # the whole class goes: class 20 takes over, no client sees an error
        a1.stop()
        a2.stop()
        echo_many(gw.addr, 20, "failover")
        assert b.accepted == 20
        down = {e["address"] for e in gw.find_logs("deactivated endpoint")}
        assert down == {a1.addr, a2.addr}
        # class 10 comes back on the same ports: once re-admitted, it has the traffic
        back1, back2 = EchoServer.on_port(a1.port).start(), EchoServer.on_port(a2.port).start()
        servers += [back1, back2]
        for addr in (a1.addr, a2.addr):
            gw.wait_log("activated", 8, predicate=lambda e, addr=addr: e["address"] == addr)
        # each was readmitted by one TCP connect (--health-check none): the kernel
        # completes it at once, the echo server's thread counts it when it gets to it
        wait_until(lambda: back1.accepted >= 1 and back2.accepted >= 1, 5,
                   "the readmission connects did not arrive")
        b_before = b.accepted
        back_before = back1.accepted + back2.accepted
        echo_many(gw.addr, 20, "back")
        assert b.accepted == b_before
        assert back1.accepted + back2.accepted - back_before == 20
    finally:
        for s in servers:
            s.stop()


def test_weights_share_a_priority_class(gateway_factory, dm):
    with EchoServer() as heavy, EchoServer() as light:
        dm.set_records(hosts(1, 2), [
            (PLAIN, host(1), heavy.port, 10, 3),
            (PLAIN, host(2), light.port, 10, 1),
        ])
        gw = start_gateway(gateway_factory, dm, "--insecure-discovery")
        n = 400
        echo_many(gw.addr, n)
        assert heavy.accepted + light.accepted == n
        share = heavy.accepted / n
        assert 0.68 <= share <= 0.82, (heavy.accepted, light.accepted)


# -- secure records ------------------------------------------------------------------
def test_only_ssl_records_that_pass_tls_validation_are_used(gateway_factory, dm, pki):
    good = TLSEchoServer(pki.server(host(1)))
    forged = TLSEchoServer(pki.server(host(2), other_ca=True))
    try:
        dm.set_records(hosts(1, 2), [
            (SSL, host(1), good.port, 0, 1),
            (SSL, host(2), forged.port, 0, 1),
        ])
        gw = start_gateway(gateway_factory, dm, "--trusted-ca-file", pki.ca.cert)
        failed = gw.wait_log("failed to validate discovered endpoints", 1)
        assert len(failed["errors"]) == 1
        assert f"{host(2)}:{forged.port}" in failed["errors"][0]
        assert "certificate verify failed" in failed["errors"][0]
        assert gw.wait_log("using validated discovered SRV endpoints", 1)["endpoints"] == [
            f"{host(1)}:{good.port}"]
        assert gw.wait_log("ready to proxy client requests", 1)["endpoints"] == [good.addr]
        wait_until(lambda: good.handshakes == 1 and forged.accepted == 1, 5,
                   "validation connections not seen")
        # clients speak TLS through the gateway and verify the member themselves
        ctx = ssl.create_default_context(cafile=pki.ca.cert)
        for i in range(10):
            with socket.create_connection(_split(gw.addr), timeout=10) as raw:
                with ctx.wrap_socket(raw, server_hostname=host(1)) as tls:
                    payload = b"secure%d" % i
                    assert roundtrip(tls, payload) == payload
        wait_until(lambda: good.handshakes == 11, 5, "TLS clients did not all arrive")
        assert forged.accepted == 1  # the validation only
    finally:
        good.stop()
        forged.stop()


# -- re-resolution -------------------------------------------------------------------
def test_sighup_picks_up_changed_records(gateway_factory, dm):
    with EchoServer() as old, EchoServer() as new:
        dm.set_records(hosts(1, 2), [(PLAIN, host(1), old.port, 0, 1)])
        gw = start_gateway(gateway_factory, dm, "--insecure-discovery")
        with socket.create_connection(_split(gw.addr), timeout=10) as kept:
            assert roundtrip(kept, b"before") == b"before"
            dm.set_records(hosts(1, 2), [(PLAIN, host(2), new.port, 0, 1)])
            gw.signal(signal.SIGHUP)
            line = gw.wait_log("endpoints changed", 10)
            assert line["endpoints"] == [new.addr] and line["previous"] == [old.addr]
            echo_many(gw.addr, 10)
            assert (old.accepted, new.accepted) == (1, 10)
            assert roundtrip(kept, b"after") == b"after"  # still relayed to the old member


def test_periodic_refresh_picks_up_changed_records(gateway_factory, dm):
    with EchoServer() as old, EchoServer() as new:
        dm.set_records(hosts(1, 2), [(PLAIN, host(1), old.port, 0, 1)])
        gw = start_gateway(gateway_factory, dm, "--insecure-discovery", refresh="1s")
        echo_many(gw.addr, 3)
        dm.set_records(hosts(1, 2), [(PLAIN, host(2), new.port, 0, 1)])
        line = gw.wait_log("endpoints changed", 10)
        assert line["endpoints"] == [new.addr] and line["previous"] == [old.addr]
        echo_many(gw.addr, 10)
        assert (old.accepted, new.accepted) == (3, 10)


@pytest.mark.parametrize("failure", ["timeout", "servfail"])
def test_failed_refresh_keeps_the_last_good_set(gateway_factory, dm, tmp_path, failure):
    with EchoServer() as member:
        dm.set_records(hosts(1), [(PLAIN, host(1), member.port, 0, 1)])
        gw = start_gateway(gateway_factory, dm, "--insecure-discovery")
        echo_many(gw.addr, 3)
        dm.stop()  # its port now goes to a server that never answers, or SERVFAILs
        broken = (BlackholeDNS(port=dm.port) if failure == "timeout" else
                  Dnsmasq(tmp_path / "servfail", D, mode="servfail", port=dm.port))
        try:
            gw.signal(signal.SIGHUP)
            echo_many(gw.addr, 3, "pending")  # served while the refresh is under way
            line = gw.wait_log(KEEPING, 15)
            text = " ".join(line["errors"])
            assert ("timed out" if failure == "timeout" else "SERVFAIL") in text, text
            echo_many(gw.addr, 5, "after")
            assert member.accepted == 11
            assert gw.count_log("endpoints changed") == 0
            assert gw.running()
        finally:
            broken.stop()


def test_periodic_refresh_slower_than_its_interval_still_completes(gateway_factory, dm):
    """A blackholed DNS makes one refresh take two query timeouts (about 4 s: both SRV
    names time out at 2 s); with a 1 s interval the next tick must not throw the
    running refresh away, or no refresh ever finishes and nothing is ever logged."""
    with EchoServer() as member:
        dm.set_records(hosts(1), [(PLAIN, host(1), member.port, 0, 1)])
        gw = start_gateway(gateway_factory, dm, "--insecure-discovery", refresh="1s")
        dm.stop()
        with BlackholeDNS(port=dm.port):
            line = gw.wait_log(KEEPING, 12, predicate=lambda e: any(
                "timed out" in err for err in e["errors"]))
            assert gw.running()
            echo_many(gw.addr, 3)
            assert member.accepted == 3
            assert gw.count_log("endpoints changed") == 0, line


# -- nothing at start ----------------------------------------------------------------
def test_no_records_at_start_is_fatal(dm):
    dm.set_records(hosts(1), [])
    began = time.monotonic()
    res = run_gateway(["--listen-addr", f"127.0.0.1:{free_port()}", "--discovery-srv", D,
                       "--discovery-srv-resolver", dm.addr, "--insecure-discovery"],
                      timeout=20)
    elapsed = time.monotonic() - began
    assert res.returncode != 0, res.stderr
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1, res.stderr
    assert "--discovery-srv" in lines[0] and "NXDOMAIN" in lines[0]
    assert elapsed < 10
