"""Round robin over healthy members, down ones last."""
from collections import Counter

from gateway.picker import round_robin


def test_rotates_over_healthy_members():
    firsts = [round_robin("abc", [True] * 3, n)[0] for n in range(60)]
    assert Counter(firsts) == {"a": 20, "b": 20, "c": 20}


def test_skips_members_marked_down():
    firsts = [round_robin("abc", [True, False, True], n)[0] for n in range(10)]
    assert set(firsts) == {"a", "c"}


def test_down_members_come_last_for_failover():
    assert round_robin("abc", [True, False, True], 1) == ["c", "a", "b"]


def test_all_down_still_offers_every_member_once():
    assert sorted(round_robin("abc", [False] * 3, 7)) == ["a", "b", "c"]


def test_every_candidate_appears_exactly_once():
    for n in range(5):
        assert sorted(round_robin("abcd", [True, False, True, True], n)) == list("abcd")
