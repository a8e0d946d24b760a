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


# -- RFC 2782 (SRV) --------------------------------------------------------------------
import random  # noqa: E402

from gateway.picker import rfc2782  # noqa: E402

PRIO = lambda e: e[1]      # noqa: E731  entries are (name, priority, weight)
WEIGHT = lambda e: e[2]    # noqa: E731


def firsts(entries, up, n=20000, seed=7):
    rng = random.Random(seed)
    return Counter(rfc2782(entries, up, PRIO, WEIGHT, rng.random)[0][0] for _ in range(n))


def test_weights_3_and_1_share_75_25():
    counts = firsts([("a", 0, 3), ("b", 0, 1)], [True, True])
    assert abs(counts["a"] / 20000 - 0.75) < 0.02


def test_the_lowest_priority_class_takes_every_new_client():
    counts = firsts([("backup", 20, 9), ("a", 10, 1), ("b", 10, 1)], [True] * 3)
    assert counts["backup"] == 0 and abs(counts["a"] - counts["b"]) < 1000


def test_the_next_class_takes_over_when_the_best_is_down():
    counts = firsts([("a", 10, 1), ("backup", 20, 1)], [False, True], n=100)
    assert counts == {"backup": 100}


def test_weight_zero_gets_a_small_share_only_beside_weighted_records():
    counts = firsts([("a", 0, 5), ("zero", 0, 0)], [True, True])
    assert 0 < counts["zero"] < 20000 * 0.03
    assert abs(firsts([("x", 0, 0), ("y", 0, 0)], [True, True])["x"] / 20000 - 0.5) < 0.02


def test_failover_order_lists_lower_classes_then_down_members():
    order = rfc2782([("a", 1, 1), ("b", 2, 1), ("dead", 0, 1)], [True, True, False],
                    PRIO, WEIGHT, random.random)
    assert [e[0] for e in order] == ["a", "b", "dead"]


# -- least connections -----------------------------------------------------------------
from gateway.picker import least_connections  # noqa: E402


def test_least_connections_puts_the_least_loaded_member_first():
    assert least_connections("abc", [True] * 3, [10, 0, 10], 0)[0] == "b"


def test_least_connections_rotates_among_ties():
    firsts = [least_connections("abc", [True] * 3, [4, 1, 1], n)[0] for n in range(10)]
    assert Counter(firsts) == {"b": 5, "c": 5}


def test_least_connections_puts_members_marked_down_last():
    assert least_connections("abc", [False, True, True], [0, 5, 3], 0) == ["c", "b", "a"]


def test_least_connections_keeps_the_srv_priority_class():
    entries = [("a", 10, 1), ("b", 10, 1), ("c", 20, 1)]
    order = least_connections(entries, [True] * 3, [50, 40, 0], 0, PRIO, WEIGHT)
    assert [e[0] for e in order] == ["b", "a", "c"]


def test_least_connections_weighs_load_by_srv_weight():
    entries = [("heavy", 10, 3), ("light", 10, 1)]
    # (6 + 1) / 3 < (2 + 1) / 1, but (9 + 1) / 3 > (2 + 1) / 1
    assert least_connections(entries, [True] * 2, [6, 2], 0, PRIO, WEIGHT)[0][0] == "heavy"
    assert least_connections(entries, [True] * 2, [9, 2], 0, PRIO, WEIGHT)[0][0] == "light"


def test_rotating_a_kept_split_is_round_robin():
    from gateway.picker import rotate, split
    up = [True, False, True, True]
    healthy, down = split("abcd", up)
    for n in range(8):
        assert rotate(healthy, down, n) == round_robin("abcd", up, n)
    assert rotate(*split("ab", [False, False]), 3) == ["a", "b"]
