"""The shared-memory table: roster, marks and counters, seen across fork."""
import os
import socket
import time

import pytest

from gateway.endpoints import Endpoint
from gateway.health import C_ACTIVE, C_BYTES_SENT, C_CONNECTIONS, HealthTable


def ep(port, label=None):
    return Endpoint(label or f"127.0.0.1:{port}", socket.AF_INET, "127.0.0.1", port)


def test_publish_gives_every_endpoint_a_slot():
    table = HealthTable()
    roster = table.publish([ep(1), ep(2), ep(3)])
    assert [e.endpoint.port for e in roster] == [1, 2, 3]
    assert len({e.slot for e in roster}) == 3


def test_endpoints_that_remain_keep_their_slot_and_mark():
    table = HealthTable()
    first = {e.endpoint.port: e.slot for e in table.publish([ep(1), ep(2)])}
    table.mark_down(first[2], "refused")
    second = {e.endpoint.port: e.slot for e in table.publish([ep(2), ep(3)])}
    assert second[2] == first[2]
    assert not table.is_up(second[2])
    assert table.is_up(second[3])


def test_new_endpoints_start_up_and_do_not_reuse_a_just_freed_slot():
    table = HealthTable()
    slot1 = table.publish([ep(1)])[0].slot
    table.mark_down(slot1, "x")
    slot2 = table.publish([ep(2)])[0].slot
    assert slot2 != slot1
    assert table.is_up(slot2)


def test_mark_down_reports_only_the_transition():
    table = HealthTable()
    slot = table.publish([ep(1)])[0].slot
    assert table.mark_down(slot, "refused") is True
    assert table.mark_down(slot, "refused") is False
    assert table.last_error(slot) == "refused"


def test_mark_up_is_compare_and_clear():
    table = HealthTable()
    slot = table.publish([ep(1)])[0].slot
    table.mark_down(slot, "a", now=100.0)
    seen = table.down_at(slot)
    table.mark_down(slot, "b", now=200.0)  # a newer failure while the probe ran
    assert table.mark_up(slot, if_down_at=seen) is False
    assert not table.is_up(slot)
    assert table.mark_up(slot, if_down_at=table.down_at(slot)) is True
    assert table.is_up(slot)


def test_generation_moves_on_every_publish():
    table = HealthTable()
    g0 = table.generation
    table.publish([ep(1)])
    assert table.generation == g0 + 2


def test_a_mark_made_in_a_child_is_seen_by_the_parent():
    table = HealthTable()
    slot = table.publish([ep(1)])[0].slot
    pid = os.fork()
    if pid == 0:
        table.mark_down(slot, "seen by child")
        os._exit(0)
    os.waitpid(pid, 0)
    assert not table.is_up(slot)
    assert table.last_error(slot) == "seen by child"


def test_round_robin_counter_is_shared_across_processes():
    table = HealthTable()
    table.next_rr()
    pid = os.fork()
    if pid == 0:
        table.next_rr()
        os._exit(0)
    os.waitpid(pid, 0)
    assert table.next_rr() == 2


def test_counters_sum_workers_and_survive_a_released_worker_slot():
    table = HealthTable()
    slot = table.publish([ep(1)])[0].slot
    w0 = table.claim_worker_slot(100)
    w1 = table.claim_worker_slot(101)
    table.add_at(table.counter_offset(w0, slot, C_CONNECTIONS), 3)
    table.add_at(table.counter_offset(w1, slot, C_CONNECTIONS), 4)
    table.add_at(table.counter_offset(w1, slot, C_BYTES_SENT), 1000)
    table.add_at(table.counter_offset(w1, slot, C_ACTIVE), 2)
    assert table.counter(slot, C_CONNECTIONS) == 7
    table.release_worker_slot(w1)
    assert table.counter(slot, C_CONNECTIONS) == 7
    assert table.counter(slot, C_BYTES_SENT) == 1000
    assert table.counter(slot, C_ACTIVE) == 0  # a dead worker's connections are gone
    w2 = table.claim_worker_slot(102)
    assert w2 == w1 and table.counter(slot, C_CONNECTIONS, worker=w2) == 0


def test_gauges_never_go_below_zero():
    table = HealthTable()
    slot = table.publish([ep(1)])[0].slot
    w = table.claim_worker_slot(1)
    table.add_at(table.counter_offset(w, slot, C_ACTIVE), -1)
    assert table.counter(slot, C_ACTIVE, worker=w) == 0


def test_last_change_is_recorded_on_transitions():
    table = HealthTable()
    slot = table.publish([ep(1)])[0].slot
    before = time.time()
    table.mark_down(slot, "x")
    assert table.last_change(slot) >= before


def test_a_counted_connection_is_also_the_count_of_its_dials_histogram():
    table = HealthTable()
    slot = table.publish([ep(1)])[0].slot
    w = table.claim_worker_slot(1)
    for seconds in (0.0001, 0.0005, 0.00051, 7.0):  # 0.0005: on the first bound, in it
        table.count_connection(table.cell(w, slot, 0), seconds)
    buckets, _, count = table.dial_histogram(slot)
    assert table.counter(slot, C_CONNECTIONS) == count == 4
    assert buckets[0] == (0.0005, 2) and buckets[1] == (0.001, 3)
    assert buckets[-1] == (5.0, 3)  # 7 s: past the last bound, in the count only


def test_dial_histogram_is_cumulative_with_sum_and_count():
    from gateway.health import DIAL_BUCKETS
    table = HealthTable()
    slot = table.publish([ep(1)])[0].slot
    w = table.claim_worker_slot(1)
    for seconds in (0.0002, 0.003, 0.003, 0.7, 9.0):
        table.count_connection(table.cell(w, slot, 0), seconds)
    buckets, total, count = table.dial_histogram(slot)
    assert count == 5
    assert abs(total - 9.7062) < 1e-3
    as_dict = dict(buckets)
    assert as_dict[0.0005] == 1 and as_dict[0.005] == 3 and as_dict[1.0] == 4
    assert buckets[-1] == (DIAL_BUCKETS[-1], 4)   # 9 s is past the last bound: count only


def test_gateway_wide_counters_survive_a_dead_worker():
    from gateway.health import G_ACCEPTED, GATEWAY
    table = HealthTable()
    w = table.claim_worker_slot(1)
    table.add_at(table.counter_offset(w, GATEWAY, G_ACCEPTED), 5)
    table.release_worker_slot(w)
    table.add_at(table.counter_offset(table.claim_worker_slot(2), GATEWAY, G_ACCEPTED), 1)
    assert table.counter(GATEWAY, G_ACCEPTED) == 6


def test_the_master_row_counts_toward_totals():
    from gateway.health import C_HEALTH_CHECK_FAILURES
    table = HealthTable()
    slot = table.publish([ep(1)])[0].slot
    table.add_at(table.counter_offset(table.master_row, slot, C_HEALTH_CHECK_FAILURES), 2)
    assert table.counter(slot, C_HEALTH_CHECK_FAILURES) == 2


def test_a_full_length_dns_name_fits_as_a_label():
    name = ("a" * 63 + ".") * 3 + "b" * 61  # 253 bytes, the DNS maximum
    table = HealthTable()
    table.publish([Endpoint(f"{name}:2379", socket.AF_INET, "127.0.0.1", 2379)])
    assert table.roster()[0].endpoint.label == f"{name}:2379"


# -- load aggregates (least-connections, --max-connections) ----------------------------
from gateway.health import G_OPEN, GATEWAY, Balance  # noqa: E402


def _loaded_table():
    table = HealthTable()
    slots = [e.slot for e in table.publish([ep(1), ep(2)])]
    me, other = table.claim_worker_slot(10), table.claim_worker_slot(11)
    return table, slots, me, other


def test_a_workers_own_connections_count_at_once():
    table, slots, me, _ = _loaded_table()
    table.add_at(table.counter_offset(me, slots[0], C_ACTIVE), 3)
    assert table.relayed_per_endpoint(me, slots) == [3, 0]
    assert table.open_connections(me, own=3) == 3


def test_other_workers_connections_count_from_the_masters_last_refresh():
    table, slots, me, other = _loaded_table()
    table.add_at(table.counter_offset(other, slots[1], C_ACTIVE), 2)
    table.set_at(table.counter_offset(other, GATEWAY, G_OPEN), 2)
    assert table.relayed_per_endpoint(me, slots) == [0, 0]   # not refreshed yet
    table.refresh_load()
    assert table.relayed_per_endpoint(me, slots) == [0, 2]
    assert table.open_connections(me, own=1) == 3


def test_own_changes_after_a_refresh_are_not_counted_twice():
    table, slots, me, _ = _loaded_table()
    table.add_at(table.counter_offset(me, slots[0], C_ACTIVE), 4)
    table.refresh_load()
    table.add_at(table.counter_offset(me, slots[0], C_ACTIVE), -1)
    assert table.relayed_per_endpoint(me, slots) == [3, 0]


def test_a_dead_workers_connections_leave_the_aggregates_when_its_slot_is_released():
    table, slots, me, other = _loaded_table()
    table.add_at(table.counter_offset(other, slots[0], C_ACTIVE), 5)
    table.set_at(table.counter_offset(other, GATEWAY, G_OPEN), 5)
    table.refresh_load()
    table.release_worker_slot(other)
    assert table.relayed_per_endpoint(me, slots) == [0, 0]
    assert table.open_connections(me, own=0) == 0
    reused = table.claim_worker_slot(12)
    assert table.relayed_per_endpoint(reused, slots) == [0, 0]


def test_the_limit_and_balance_policy_are_shared():
    table = HealthTable()
    assert (table.max_connections, table.balance) == (0, Balance.ROUND_ROBIN)
    table.set_load_policy(5, Balance.LEAST_CONNECTIONS)
    if os.fork() == 0:
        os._exit(0 if (table.max_connections, table.balance)
                 == (5, Balance.LEAST_CONNECTIONS) else 1)
    _, status = os.wait()
    assert os.WEXITSTATUS(status) == 0


def test_a_slot_with_sessions_of_a_removed_endpoint_is_not_given_to_a_newcomer():
    table = HealthTable(max_endpoints=4)
    worker = table.claim_worker_slot(os.getpid())
    old = table.publish([ep(1)])[0].slot
    table.add_at(table.counter_offset(worker, old, C_ACTIVE), 1)  # a session stays open
    for port in (2, 3, 4, 5):  # each publish removes the previous endpoint
        entry = table.publish([ep(port)])[0]
        assert entry.slot != old, f"endpoint {port} was given the busy slot"
        assert table.counter(entry.slot, C_ACTIVE) == 0
    # the removed endpoint's session keeps writing its old slot, nobody else's
    table.add_at(table.counter_offset(worker, old, C_BYTES_SENT), 100)
    assert all(table.counter(e.slot, C_BYTES_SENT) == 0 for e in table.roster())


def test_a_busy_slot_is_taken_only_when_no_other_slot_is_free():
    table = HealthTable(max_endpoints=2)
    worker = table.claim_worker_slot(os.getpid())
    old = table.publish([ep(1)])[0].slot
    table.add_at(table.counter_offset(worker, old, C_ACTIVE), 1)
    roster = table.publish([ep(2), ep(3)])  # two newcomers, two slots: one is the busy one
    assert sorted(e.slot for e in roster) == [0, 1]


# -- timed-out dials: busy or dead --------------------------------------------------
def test_timed_out_dials_count_in_a_row_and_a_success_clears_them():
    table = HealthTable()
    slot = table.publish([ep(1)])[0].slot
    assert table.note_dial_timeout(slot, started=10.0, now=11.0) == 1
    assert table.note_dial_timeout(slot, started=11.0, now=12.0) == 2
    table.note_dial_ok(slot, now=12.5)
    assert table.dial_timeouts(slot) == 0
    assert table.note_dial_timeout(slot, started=13.0, now=14.0) == 1


def test_dials_that_waited_through_the_same_silence_count_once():
    # a storm: hundreds of dials started together time out together
    table = HealthTable()
    slot = table.publish([ep(1)])[0].slot
    assert table.note_dial_timeout(slot, started=10.0, now=11.0) == 1
    for started in (10.0, 10.2, 10.9):
        assert table.note_dial_timeout(slot, started=started, now=11.5) == 1
    assert table.note_dial_timeout(slot, started=11.2, now=12.2) == 2


def test_a_timeout_overtaken_by_a_successful_dial_does_not_count():
    # the member accepted someone while this SYN waited: busy, not dead
    table = HealthTable()
    slot = table.publish([ep(1)])[0].slot
    table.note_dial_ok(slot, now=20.5)
    assert table.note_dial_timeout(slot, started=20.0, now=21.0) == 0
    assert table.dial_timeouts(slot) == 0


def test_readmission_clears_the_timed_out_dials():
    table = HealthTable()
    slot = table.publish([ep(1)])[0].slot
    table.note_dial_timeout(slot, started=1.0, now=2.0)
    table.mark_down(slot, "i/o timeout")
    assert table.mark_up(slot)
    assert table.dial_timeouts(slot) == 0


# -- worker slots and heartbeats ----------------------------------------------------
def test_no_free_worker_slot_is_a_distinct_error():
    from gateway.health import NoWorkerSlot

    table = HealthTable(max_workers=2)
    table.claim_worker_slot(1)
    table.claim_worker_slot(2)
    try:
        table.claim_worker_slot(3)
    except NoWorkerSlot:
        pass
    else:
        raise AssertionError("a third worker got a slot out of two")


def test_a_heartbeat_is_seen_by_the_master_and_a_new_slot_starts_without_one():
    table = HealthTable(max_workers=2)
    index = table.claim_worker_slot(1)
    pid = os.fork()
    if pid == 0:
        table.beat(index, 123.5)
        os._exit(0)
    os.waitpid(pid, 0)
    assert table.last_beat(index) == 123.5
    table.release_worker_slot(index)
    assert table.last_beat(table.claim_worker_slot(2)) == 0.0


def test_a_record_whose_fields_do_not_fit_is_refused_at_import():
    from gateway.health import _Record
    with pytest.raises(RuntimeError, match="16 bytes of fields in a 8-byte record"):
        _Record(8, ("flag", "B"), ("value", "Q"))


def test_record_fields_are_aligned_to_their_size():
    from gateway.health import _Record
    record = _Record(32, ("flag", "B"), ("count", "I"), ("name", "3s"), ("at", "d"))
    assert record.offsets == {"flag": 0, "count": 4, "name": 8, "at": 16}


def test_the_roster_order_is_published_with_the_roster():
    from gateway.endpoints import Order
    table = HealthTable()
    table.publish([Endpoint("a", socket.AF_INET, "127.0.0.1", 2379)], Order.RFC2782)
    assert table.policy is Order.RFC2782
    table.publish([Endpoint("a", socket.AF_INET, "127.0.0.1", 2379)])
    assert table.policy is Order.ROUND_ROBIN


def test_a_dial_unanswered_for_long_makes_a_suspect_unless_another_succeeds():
    table = HealthTable()
    silent, busy = (e.slot for e in table.publish([ep(1), ep(2)]))
    for slot in (silent, busy):
        table.note_dial_start(slot, now=10.0)
    table.note_dial_ok(busy, now=10.1)            # busy: someone else got through
    assert not table.suspect(silent, now=10.2, after=0.25)
    assert table.suspect(silent, now=10.3, after=0.25)
    assert not table.suspect(busy, now=10.3, after=0.25)
    table.note_dial_ok(silent, now=10.4)          # it answered after all
    assert not table.suspect(silent, now=11.0, after=0.25)


# -- counts in place and the health stamp -------------------------------------------
def test_a_count_a_worker_adds_to_its_cells_is_its_counter_at_once():
    from gateway.health import GATEWAY, G_OPEN
    table = HealthTable()
    slot = table.publish([ep(1)])[0].slot
    w = table.claim_worker_slot(os.getpid())
    cells = table.cells
    cells[table.cell(w, slot, C_CONNECTIONS)] += 2
    cells[table.cell(w, slot, 0) + C_BYTES_SENT] += 300  # a column's cells are consecutive
    cells[table.cell(w, GATEWAY, G_OPEN)] = 4
    assert table.counter(slot, C_CONNECTIONS) == 2
    assert table.counter(slot, C_BYTES_SENT, worker=w) == 300
    assert table.counter(GATEWAY, G_OPEN) == 4


def test_the_health_stamp_moves_on_a_change_of_mark_not_on_a_repeated_one():
    table = HealthTable()
    slot = table.publish([ep(1)])[0].slot
    stamp = table.health_stamp
    assert table.mark_down(slot, "refused", now=1.0)
    moved = table.health_stamp
    assert moved != stamp
    table.mark_down(slot, "refused again", now=2.0)
    assert table.health_stamp == moved
    assert table.mark_up(slot)
    assert table.health_stamp != moved


def test_a_success_moves_the_health_stamp_only_when_it_ends_a_suspicion():
    table = HealthTable()
    slot = table.publish([ep(1)])[0].slot
    table.note_dial_start(slot, now=10.0)
    stamp = table.health_stamp                   # a dial start moves none
    table.note_dial_ok(slot, now=10.1, after=0.25)
    assert table.health_stamp == stamp           # answered before it was a suspect
    table.note_dial_start(slot, now=11.0)
    table.note_dial_ok(slot, now=11.5, after=0.25)
    assert table.health_stamp != stamp           # it was one: every view must drop it


def test_the_suspect_expiry_is_when_a_waiting_dial_would_make_a_suspect():
    table = HealthTable()
    slot = table.publish([ep(1)])[0].slot
    assert table.suspect_expiry(slot, now=10.0, after=0.25) == 10.25  # a dial from now on
    table.note_dial_start(slot, now=9.9)
    assert table.suspect_expiry(slot, now=10.0, after=0.25) == 9.9 + 0.25
