"""From --endpoints to roster entries: names, literals, capacity, and lookups that fail.

Nothing here asks a DNS server: names resolve from /etc/hosts (`localhost`), and a name
that cannot resolve is one whose label is longer than DNS allows (refused at once).
"""
import socket

import pytest

from gateway import config, discovery
from gateway.addresses import Resolved
from gateway.endpoints import Endpoint, Order, RosterEntry

TOO_LONG = "x" * 64 + ".test"   # a DNS label over 63 bytes: fails without a query


def load(*argv):
    return config.load(list(argv), {})


def test_ip_literals_are_not_names_and_need_no_lookups():
    c = load("--endpoints", "127.0.0.1:2379,[::1]:2379")
    assert discovery.names(c) == []
    assert discovery.refresh_period(c) is None


def test_names_are_looked_up_again_every_endpoints_refresh():
    c = load("--endpoints", "127.0.0.1:2379,localhost:2380", "--endpoints-refresh", "3s")
    assert discovery.names(c) == ["localhost:2380"]
    assert discovery.refresh_period(c) == 3.0


def test_endpoints_refresh_0_turns_periodic_lookups_off():
    c = load("--endpoints", "localhost:2379", "--endpoints-refresh", "0")
    assert discovery.refresh_period(c) is None


def test_the_default_refresh_follows_a_change_within_10_seconds():
    assert discovery.refresh_period(load("--endpoints", "localhost:2379")) <= 5.0


def test_with_srv_discovery_the_srv_refresh_period_applies():
    c = load("--discovery-srv", "example.test", "--discovery-srv-refresh", "7s",
             "--endpoints", "localhost:2379")
    assert discovery.names(c) == []
    assert discovery.refresh_period(c) == 7.0


def test_every_address_of_a_name_is_an_entry_labelled_by_the_name():
    c = load("--endpoints", "localhost:2479")
    entries = discovery.resolve_static(c)
    expected = {info[4][0] for info in socket.getaddrinfo("localhost", 2479,
                                                          proto=socket.IPPROTO_TCP)}
    assert {e.ip for e in entries} == expected
    assert {e.label for e in entries} == {"localhost:2479"}


def test_a_name_that_does_not_resolve_at_start_is_a_config_error():
    with pytest.raises(config.ConfigError, match="option --endpoints: cannot resolve"):
        discovery.resolve_static(load("--endpoints", f"{TOO_LONG}:2379"))


def test_a_name_that_stops_resolving_keeps_its_known_addresses():
    c = load("--endpoints", f"{TOO_LONG}:2379,127.0.0.9:2379")
    label = f"{TOO_LONG}:2379"
    known = {label: [Endpoint(label, socket.AF_INET, "127.0.0.7", 2379)]}
    answer = discovery.lookup(c, known)
    assert [(e.label, e.ip) for e in answer.endpoints] == [(label, "127.0.0.7"),
                                                            ("127.0.0.9:2379", "127.0.0.9")]
    assert answer.unresolved == [label]
    assert len(answer.errors) == 1 and label in answer.errors[0]


def test_a_new_name_that_does_not_resolve_has_no_entries_yet():
    c = load("--endpoints", f"{TOO_LONG}:2379")
    answer = discovery.lookup(c, {})
    assert answer.endpoints == [] and answer.unresolved == [f"{TOO_LONG}:2379"]


def test_a_reload_keeps_the_addresses_of_names_still_configured_until_its_lookup():
    roster = [RosterEntry(0, Endpoint("db.test:2379", socket.AF_INET, "127.0.0.5", 2379)),
              RosterEntry(1, Endpoint("gone.test:2379", socket.AF_INET, "127.0.0.6", 2379))]
    c = load("--endpoints", "db.test:2379,new.test:2379,127.0.0.8:2379")
    assert [(e.label, e.ip) for e in discovery.provisional(
        c, roster, discovery.listens_at_start(c))] == [
        ("db.test:2379", "127.0.0.5"), ("127.0.0.8:2379", "127.0.0.8")]


def test_a_reload_refuses_a_literal_that_is_the_listen_address():
    c = load("--endpoints", "127.0.0.1:23790")
    with pytest.raises(config.ConfigError, match="relay to itself"):
        discovery.provisional(c, [], discovery.listens_at_start(c))


def test_a_reload_reuses_the_listen_addresses_it_knows_and_parses_literals():
    c = load("--listen-addr", "gw.test:23790,127.0.0.2:23791,unix:///tmp/gw.sock")
    known_listen = c.listen_addr[0]
    kept = [Resolved(socket.AF_INET, ("127.0.0.9", 23790))]
    assert discovery.listens_for_reload(c, [(known_listen, kept)]) == [
        (known_listen, kept),
        (c.listen_addr[1], [Resolved(socket.AF_INET, ("127.0.0.2", 23791))])]


def test_a_reload_refuses_a_listen_name_it_does_not_know():
    c = load("--listen-addr", "new.test:23790")
    with pytest.raises(config.ConfigError, match="--listen-addr.*new.test:23790.*host name"):
        discovery.listens_for_reload(c, [])


def test_past_the_table_capacity_every_name_keeps_a_share():
    groups = [(f"n{g}.test:2379", [Resolved(socket.AF_INET, (f"10.{g}.0.{i}", 2379))
                                   for i in range(1, 41)]) for g in range(3)]
    notes: list[str] = []
    entries = discovery._assemble(groups, notes)
    assert len(entries) == config.MAX_ENDPOINTS
    shares = [sum(1 for e in entries if e.label == label) for label, _ in groups]
    assert min(shares) >= config.MAX_ENDPOINTS // 3
    assert len(notes) == 1 and "120 addresses" in notes[0]


def test_an_address_given_twice_is_one_entry_under_the_first_name():
    same = Resolved(socket.AF_INET, ("127.0.0.5", 2379))
    entries = discovery._assemble([("a.test:2379", [same]), ("b.test:2379", [same])], [])
    assert [e.label for e in entries] == ["a.test:2379"]


def test_an_answer_crosses_the_pipe_unchanged():
    answer = discovery.Answer([Endpoint("db.test:2379", socket.AF_INET6, "::1", 2379)],
                              Order.ROUND_ROBIN, ["one error"], ["db.test:2379"])
    assert discovery.Answer.from_json(answer.to_json()) == answer
