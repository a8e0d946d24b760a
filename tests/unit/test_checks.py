"""What the member checks read from etcd's answers (the answers are etcd 3.4's own)."""
import json
import socket

from gateway.checks import MemberStatus, judge_health, judge_status
from gateway.endpoints import Endpoint
from gateway.health import EndpointState, HealthTable, MemberAlarm, MemberRole

ME = "3483844313027796557"
OTHER = "10501334649042878790"
ADDR = "http://127.0.0.1:2379"


def answer(doc, status="200 OK", chunked=False) -> bytes:
    body = json.dumps(doc).encode()
    if chunked:
        head = "Transfer-Encoding: chunked\r\n"
        body = b"%x\r\n%s\r\n0\r\n\r\n" % (len(body), body)
    else:
        head = f"Content-Length: {len(body)}\r\n"
    return f"HTTP/1.1 {status}\r\nContent-Type: application/json\r\n{head}\r\n".encode() + body


def status_doc(**extra):
    doc = {"header": {"cluster_id": "1", "member_id": ME, "revision": "1", "raft_term": "2"},
           "version": "3.4.23", "dbSize": "20480", "leader": ME, "raftIndex": "4"}
    doc.update(extra)
    return doc


def test_a_voter_with_a_leader_can_take_clients():
    result = judge_status(ADDR, answer(status_doc()))
    assert isinstance(result, MemberStatus)
    assert result.role == MemberRole.VOTER and result.problem() is None


def test_is_learner_makes_the_role_learner():
    result = judge_status(ADDR, answer(status_doc(isLearner=True, leader=OTHER)))
    assert isinstance(result, MemberStatus) and result.role == MemberRole.LEARNER


def test_no_leader_is_a_problem():
    doc = status_doc(errors=["etcdserver: no leader"])
    del doc["leader"]  # the gRPC gateway leaves out a zero leader
    result = judge_status(ADDR, answer(doc))
    assert isinstance(result, MemberStatus) and result.problem() == "etcdserver: no leader"


def test_nospace_is_recorded_and_not_a_problem():
    doc = status_doc(errors=[f"memberID:{ME} alarm:NOSPACE "])
    result = judge_status(ADDR, answer(doc))
    assert isinstance(result, MemberStatus)
    assert result.alarms == MemberAlarm.NOSPACE and result.problem() is None


def test_corrupt_naming_this_member_is_a_problem_and_naming_another_is_not():
    mine = judge_status(ADDR, answer(status_doc(errors=[f"memberID:{ME} alarm:CORRUPT "])))
    theirs = judge_status(ADDR, answer(status_doc(errors=[f"memberID:{OTHER} alarm:CORRUPT "])))
    assert isinstance(mine, MemberStatus) and isinstance(theirs, MemberStatus)
    assert "CORRUPT" in (mine.problem() or "")
    assert theirs.problem() is None and theirs.alarms == MemberAlarm.CORRUPT


def test_a_chunked_answer_is_read():
    result = judge_status(ADDR, answer(status_doc(isLearner=True), chunked=True))
    assert isinstance(result, MemberStatus) and result.role == MemberRole.LEARNER


def test_404_is_a_member_whose_role_cannot_be_seen():
    result = judge_status(ADDR, b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n")
    assert isinstance(result, MemberStatus)
    assert result.role == MemberRole.UNKNOWN and result.problem() is None


def test_other_answers_are_one_line_errors():
    assert judge_status(ADDR, b"") == f"POST {ADDR}/v3/maintenance/status: not an HTTP answer"
    assert "status 503" in str(judge_status(ADDR, b"HTTP/1.1 503 Service Unavailable\r\n\r\n"))
    assert "not json" in str(judge_status(ADDR, b"HTTP/1.1 200 OK\r\n\r\nnot json"))


def test_health_wants_200_and_health_true():
    ok = b'HTTP/1.1 200 OK\r\nContent-Length: 16\r\n\r\n{"health":"true"}'
    assert judge_health(ADDR, ok) is None
    assert "false" in str(judge_health(ADDR, ok.replace(b"true", b"false")))


# -- the one rule, in the table ---------------------------------------------------------
def test_a_learner_is_never_a_candidate_and_an_unchecked_member_is_not_in_rotation():
    table = HealthTable(max_workers=2)
    slots = [e.slot for e in table.publish(
        [Endpoint(str(p), socket.AF_INET, "127.0.0.1", p) for p in (1, 2, 3, 4)])]
    voter, learner, unchecked, unknown = slots
    table.set_role(voter, MemberRole.VOTER)
    table.set_role(learner, MemberRole.LEARNER)
    table.set_role(unknown, MemberRole.UNKNOWN)
    assert [table.is_candidate(s) for s in slots] == [True, False, True, True]
    assert [table.in_rotation(s) for s in slots] == [True, False, False, True]
    assert table.state(learner) == EndpointState.LEARNER
    assert table.state(unchecked) == EndpointState.UNCHECKED
    table.mark_down(voter, "refused")
    assert table.state(voter) == EndpointState.DOWN and table.is_candidate(voter)


def test_a_new_slot_starts_unchecked_even_where_a_learner_was():
    table = HealthTable(max_workers=2)
    slot = table.publish([Endpoint("a", socket.AF_INET, "127.0.0.1", 1)])[0].slot
    table.set_role(slot, MemberRole.LEARNER)
    table.set_alarms(slot, MemberAlarm.NOSPACE)
    table.publish([])
    for _ in range(table.max_endpoints):  # cycle until the slot is handed out again
        again = table.publish([Endpoint("b", socket.AF_INET, "127.0.0.1", 2)])[0].slot
        if again == slot:
            break
        table.publish([])
    assert again == slot
    assert table.role(slot) == MemberRole.UNCHECKED and table.alarms(slot) == MemberAlarm.NONE
