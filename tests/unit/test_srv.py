"""Unit tests of gateway.srv that need no network: names, records, resolver setup, JSON."""
from __future__ import annotations

import socket

import dns.nameserver
import dns.rdata
import pytest

from gateway import srv
from gateway.addresses import HostPort
from gateway.endpoints import Endpoint


def _srv_rdata(text: str):
    return dns.rdata.from_text("IN", "SRV", text)


def test_srv_names_without_name():
    assert srv.srv_names("example.test") == ("_etcd-client-ssl._tcp.example.test",
                                             "_etcd-client._tcp.example.test")


def test_srv_names_with_name_and_trailing_dot():
    assert srv.srv_names("example.test.", "prod") == ("_etcd-client-ssl-prod._tcp.example.test",
                                                      "_etcd-client-prod._tcp.example.test")


def test_records_from_answer_strip_trailing_dot_and_keep_fields():
    recs = srv.records_from_answer([_srv_rdata("10 5 2379 b1.example.test."),
                                    _srv_rdata("20 0 12379 B2.Example.Test.")], secure=True)
    assert recs == [srv.SrvRecord("b1.example.test", 2379, 10, 5, True),
                    srv.SrvRecord("B2.Example.Test", 12379, 20, 0, True)]
    assert recs[0].label == "b1.example.test:2379"


def test_records_from_answer_root_target_is_empty():
    # RFC 2782 "." target: `lookup` drops it with an error instead of dialing ""
    assert srv.records_from_answer([_srv_rdata("0 0 0 .")], secure=False)[0].target == ""


def test_unique_records_keeps_first_per_target_and_port():
    a = srv.SrvRecord("b1.example.test", 2379, 10, 5, True)
    recs = [a,
            srv.SrvRecord("b1.example.test", 2379, 10, 5, True),      # exact duplicate
            srv.SrvRecord("B1.example.test.", 2379, 0, 0, False),     # same member, plain
            srv.SrvRecord("b1.example.test", 2380, 10, 5, True),      # other port
            srv.SrvRecord("b2.example.test", 2379, 10, 5, True)]
    assert srv.unique_records(recs) == [a, recs[3], recs[4]]


def test_make_resolver_with_servers_sets_ports_and_lifetime():
    r = srv.make_resolver((HostPort("127.0.0.1", 8600), HostPort("::1", 53)), 1.5)
    got = [(ns.address, ns.port) for ns in r.nameservers]
    assert got == [("127.0.0.1", 8600), ("::1", 53)]
    assert all(isinstance(ns, dns.nameserver.Do53Nameserver) for ns in r.nameservers)
    assert r.lifetime == 1.5
    assert 0 < r.timeout <= 1.5
    assert r.cache is None and r.search == []


def test_make_resolver_rejects_a_host_name():
    with pytest.raises(ValueError, match="not an IP address"):
        srv.make_resolver((HostPort("dns.example.test", 53),), 1.0)


def test_discover_reports_bad_resolver_instead_of_raising():
    d = srv.discover("example.test", "", False, "", (HostPort("dns.example.test", 53),), 1.0)
    assert d.endpoints == [] and len(d.errors) == 1 and "not an IP address" in d.errors[0]


def test_json_round_trip():
    d = srv.Discovery(
        endpoints=[Endpoint("b1.example.test:2379", socket.AF_INET, "127.0.0.1", 2379, 10, 5),
                   Endpoint("b6.example.test:2379", socket.AF_INET6, "::1", 2379, 20, 0)],
        errors=["SRV lookup of _etcd-client._tcp.example.test: no such name (NXDOMAIN)"])
    back = srv.from_json(srv.to_json(d))
    assert back == d
    assert isinstance(back.endpoints[0], Endpoint)
    assert srv.from_json(srv.to_json(srv.Discovery())) == srv.Discovery()


def test_validate_tls_reports_unloadable_ca_file(tmp_path):
    ep = Endpoint("b1.example.test:1", socket.AF_INET, "127.0.0.1", 1)
    err = srv.validate_tls(ep, "b1.example.test", str(tmp_path / "missing.pem"), 1.0)
    assert err is not None and "cannot load --trusted-ca-file" in err
