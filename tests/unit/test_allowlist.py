"""--allow-from: parsing and matching client addresses."""
import pytest

from gateway.allowlist import parse


def test_an_empty_list_lets_everyone_in():
    allow = parse([""])
    assert not allow
    assert allow.allows("192.0.2.1") and allow.allows("2001:db8::1")


def test_ipv4_networks_match_ipv4_clients():
    allow = parse(["10.0.0.0/8,192.0.2.7"])
    assert allow.allows("10.200.3.4") and allow.allows("192.0.2.7")
    assert not allow.allows("11.0.0.1") and not allow.allows("192.0.2.8")


def test_ipv6_networks_match_ipv6_clients():
    allow = parse(["fd00::/8", "::1/128"])
    assert allow.allows("fd12:3456::1") and allow.allows("::1")
    assert not allow.allows("2001:db8::1")


def test_an_ipv4_mapped_ipv6_client_matches_the_ipv4_rules():
    allow = parse(["127.0.0.1/32"])
    assert allow.allows("::ffff:127.0.0.1")
    assert not allow.allows("::ffff:127.0.0.2")
    assert not allow.allows("::1")


def test_a_scoped_link_local_client_is_matched_without_its_zone():
    assert parse(["fe80::/10"]).allows("fe80::1%eth0")


def test_repeats_are_joined_and_duplicates_dropped():
    assert str(parse(["10.0.0.0/8", "10.0.0.0/8,::1/128"])) == "10.0.0.0/8,::1/128"


@pytest.mark.parametrize("text", ["10.0.0.0/33", "10.1.2.3/8", "example.com", "fd00::/129",
                                  "10.0.0.0/8/8"])
def test_bad_networks_are_refused_naming_the_value(text):
    with pytest.raises(ValueError, match="bad network"):
        parse([f"127.0.0.1/32,{text}"])
