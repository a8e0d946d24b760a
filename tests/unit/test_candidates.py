"""A worker's view of the candidates (candidates.py): derived from the shared table
once per change of its health stamp, reused in between, and never stale: a write by
another process, a suspect's expiry, a roster or policy publish each give a new view."""
import os
import socket

from gateway.candidates import IN_ROTATION, OUT_OF_ROTATION, SUSPECT, Candidates
from gateway.endpoints import Endpoint, Order
from gateway.health import Balance, HealthTable, MemberRole

AFTER = 0.25


def ep(port: int) -> Endpoint:
    return Endpoint(f"127.0.0.1:{port}", socket.AF_INET, "127.0.0.1", port)


def rig(n: int = 3) -> tuple[HealthTable, list[int], Candidates]:
    table = HealthTable()
    slots = [e.slot for e in table.publish([ep(2379 + i) for i in range(n)])]
    for slot in slots:
        table.set_role(slot, MemberRole.VOTER)  # checked: in rotation while up
    return table, slots, Candidates(table, AFTER)


def in_another_process(action) -> None:
    """Run `action()` in a forked child, as a worker or the master would write."""
    pid = os.fork()
    if pid == 0:
        try:
            action()
        finally:
            os._exit(0)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0


def test_the_view_is_reused_while_nothing_that_decides_it_changed():
    table, slots, members = rig()
    first = members.view(10.0)
    table.note_dial_ok(slots[0], 10.05, AFTER)  # a member no one suspects answered
    table.next_rr()
    assert members.view(10.1) is first


def test_a_member_marked_down_by_another_process_leaves_the_next_view_in_rotation():
    table, slots, members = rig()
    assert members.view(10.0).up == [True, True, True]
    in_another_process(lambda: table.mark_down(slots[1], "connection refused"))
    assert members.view(10.0).up == [True, False, True]


def test_a_member_readmitted_by_the_masters_check_is_back_in_the_next_view():
    table, slots, members = rig()
    table.mark_down(slots[0], "connection refused")
    assert members.view(10.0).up == [False, True, True]
    in_another_process(lambda: table.mark_up(slots[0]))
    assert members.view(10.0).up == [True, True, True]


def test_a_learner_is_never_a_candidate_even_when_every_other_member_is_down():
    table, slots, members = rig()
    members.view(10.0)
    in_another_process(lambda: table.set_role(slots[2], MemberRole.LEARNER))
    table.mark_down(slots[0], "refused")
    table.mark_down(slots[1], "refused")
    view = members.view(10.0)
    assert [e.slot for e in view.entries] == slots[:2]
    assert not view.any_up


def test_a_member_whose_role_is_not_known_yet_is_a_candidate_out_of_rotation():
    table, slots, members = rig(2)
    table.set_role(slots[1], MemberRole.UNCHECKED)
    view = members.view(10.0)
    assert [e.slot for e in view.entries] == slots and view.up == [True, False]


def test_a_dial_waiting_longer_than_the_suspect_delay_makes_a_suspect_with_no_write():
    table, slots, members = rig()
    table.note_dial_start(slots[0], 10.0)   # unanswered from 10.0 on
    assert members.view(10.1).rank is None  # not yet a suspect
    view = members.view(10.0 + AFTER + 0.01)
    assert view.rank == {slots[0]: SUSPECT, slots[1]: IN_ROTATION, slots[2]: IN_ROTATION}


def test_a_dial_started_after_the_view_was_derived_still_makes_its_suspect_in_time():
    table, slots, members = rig()
    assert members.view(10.0).rank is None
    table.note_dial_start(slots[1], 10.1)   # moves no stamp
    assert members.view(10.1 + AFTER + 0.01).rank is not None


def test_a_timed_out_dial_makes_a_suspect_at_once_and_marked_members_rank_last():
    table, slots, members = rig()
    table.mark_down(slots[2], "refused")
    members.view(10.0)
    in_another_process(lambda: table.note_dial_timeout(slots[0], 9.0, 10.0))
    assert members.view(10.0).rank == {slots[0]: SUSPECT, slots[1]: IN_ROTATION,
                                      slots[2]: OUT_OF_ROTATION}


def test_a_success_that_ends_a_suspicion_gives_a_view_without_it():
    table, slots, members = rig()
    table.note_dial_start(slots[0], 10.0)
    assert members.view(10.5).rank is not None
    in_another_process(lambda: table.note_dial_ok(slots[0], 10.6, AFTER))
    assert members.view(10.6).rank is None


def test_a_roster_and_policies_published_by_the_master_give_a_new_view():
    table, slots, members = rig(2)
    members.view(10.0)

    def master() -> None:
        table.publish([ep(2379), ep(2390)], Order.RFC2782)
        table.set_load_policy(0, Balance.LEAST_CONNECTIONS)
    in_another_process(master)
    view = members.view(10.0)
    assert [e.endpoint.port for e in view.entries] == [2379, 2390]
    assert view.order is Order.RFC2782 and view.balance is Balance.LEAST_CONNECTIONS
    assert [e.endpoint.port for e in members.roster] == [2379, 2390]


def ports(entries) -> list[int]:
    return [e.endpoint.port for e in entries]


def test_a_round_robin_view_holds_each_rotation_of_the_members_in_rotation_then_the_rest():
    table, slots, members = rig(4)
    table.mark_down(slots[1], "refused")
    assert [ports(order) for order in members.view(10.0).rotations] == [
        [2379, 2381, 2382, 2380], [2381, 2382, 2379, 2380], [2382, 2379, 2381, 2380]]


def test_a_suspect_goes_after_the_other_members_in_rotation_in_every_round_robin_order():
    table, slots, members = rig()
    table.mark_down(slots[2], "refused")
    table.note_dial_timeout(slots[0], 9.0, 10.0)
    assert [ports(order) for order in members.view(10.0).rotations] == [
        [2380, 2379, 2381], [2380, 2379, 2381]]


def test_a_round_robin_view_with_every_member_down_still_has_an_order_to_try():
    table, slots, members = rig(2)
    for slot in slots:
        table.mark_down(slot, "refused")
    assert [ports(order) for order in members.view(10.0).rotations] == [[2379, 2380]]


def test_only_a_round_robin_view_holds_its_orders():
    table, slots, members = rig(2)
    table.set_load_policy(0, Balance.LEAST_CONNECTIONS)
    assert members.view(10.0).rotations == []
