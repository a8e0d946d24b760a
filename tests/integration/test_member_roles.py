"""etcd-aware routing by default, against real etcd 3.4: learners, no leader, NOSPACE.

Which member served a connection is read from `POST /v3/maintenance/status` sent
through the gateway (`header.member_id`), one new connection per request.
"""
import base64
import json
import os
import subprocess
import urllib.error
import urllib.request

import pytest

from tests.support.clients import wait_until
from tests.support.etcd_cluster import EtcdCluster, MemberTls
from tests.support.gateway_proc import run_gateway
from tests.support.ports import free_port
from tests.support.tls import ClusterPki

pytestmark = pytest.mark.integration


@pytest.fixture
def learner_cluster(tmp_path):
    """Two voters and one learner (member add --learner, started as existing)."""
    cluster = EtcdCluster(tmp_path / "etcd", size=2)
    cluster.start(timeout=30)
    try:
        cluster.learner = cluster.add_learner()
        yield cluster
    finally:
        cluster.stop()


def start_gateway(gateway_factory, cluster, *extra):
    listen, metrics = f"127.0.0.1:{free_port()}", f"127.0.0.1:{free_port()}"
    gw = gateway_factory([f"--endpoints={','.join(cluster.client_endpoints())}",
                          f"--listen-addr={listen}", f"--metrics-addr={metrics}", *extra])
    gw.listen, gw.metrics = listen, metrics
    return gw


def endpoints_json(gw) -> dict[str, dict]:
    with urllib.request.urlopen(f"http://{gw.metrics}/endpoints", timeout=5) as resp:
        return {row["endpoint"]: row for row in json.loads(resp.read())}


def served_by(gw, count: int) -> list[str]:
    return [EtcdCluster.member_id_of(gw.listen) for _ in range(count)]


@pytest.mark.parametrize("options", [[], ["--health-check=etcd"]], ids=["default", "etcd"])
def test_50_puts_succeed_and_the_learner_serves_none(gateway_factory, learner_cluster, options):
    cluster = learner_cluster
    gw = start_gateway(gateway_factory, cluster, *options)
    for n in range(50):
        cp = cluster.etcdctl("put", f"k{n}", f"v{n}", endpoints=gw.listen)
        assert cp.returncode == 0, f"put {n}: {cp.stderr}"
    learner_id = EtcdCluster.member_id_of(cluster.members[cluster.learner].client_addr)
    voter_ids = {EtcdCluster.member_id_of(m.client_addr) for m in cluster.members[:2]}
    seen = served_by(gw, 20)
    assert learner_id not in seen
    assert set(seen) == voter_ids  # the voters share the clients
    learner = endpoints_json(gw)[cluster.members[cluster.learner].client_addr]
    assert learner["connections_total"] == 0


def test_endpoints_status_and_the_log_show_the_learner_and_the_check(
        gateway_factory, learner_cluster):
    cluster = learner_cluster
    gw = start_gateway(gateway_factory, cluster)
    learner_addr = cluster.members[cluster.learner].client_addr
    rows = endpoints_json(gw)
    assert {k: (v["state"], v["role"], v["check"]) for k, v in rows.items()} == {
        **{m.client_addr: ("up", "voter", "etcd") for m in cluster.members[:2]},
        learner_addr: ("learner", "learner", "etcd")}
    checks = gw.find_logs("member checks")[0]
    assert checks["health-check"] == "auto"
    assert sorted(checks["etcd"]) == sorted(cluster.client_endpoints())
    assert gw.find_logs("endpoint is a learner: no client is sent to it")[0][
        "address"] == learner_addr
    result = run_gateway(["status", f"--metrics-addr={gw.metrics}"])
    row = next(line.split() for line in result.stdout.splitlines()
               if line.startswith(learner_addr))
    assert row[1:3] == ["learner", "etcd"]
    assert result.stdout.splitlines()[-1].startswith("2 of 3 endpoints up")


def test_a_promoted_learner_gets_new_connections_without_a_reload(
        gateway_factory, learner_cluster):
    cluster = learner_cluster
    gw = start_gateway(gateway_factory, cluster, "--health-check-interval=1s")
    learner_id = EtcdCluster.member_id_of(cluster.members[cluster.learner].client_addr)
    assert learner_id not in served_by(gw, 10)
    cluster.promote(cluster.learner)
    # within a few check intervals, new connections reach it
    wait_until(lambda: learner_id in served_by(gw, 6), 10,
               "the promoted member got no connection")
    row = endpoints_json(gw)[cluster.members[cluster.learner].client_addr]
    assert (row["state"], row["role"]) == ("up", "voter")
    assert gw.count_log("endpoint is no longer a learner") == 1


def test_with_every_voter_down_a_client_is_refused_not_sent_to_the_learner(
        gateway_factory, learner_cluster):
    cluster = learner_cluster
    gw = start_gateway(gateway_factory, cluster)
    cluster.kill(0)
    cluster.kill(1)
    with pytest.raises(OSError):  # closed by the gateway: no member could take it
        EtcdCluster.member_id_of(gw.listen)
    gw.wait_log("rejected client: no endpoint could be reached", 10)
    learner = endpoints_json(gw)[cluster.members[cluster.learner].client_addr]
    assert learner["connections_total"] == 0


def test_a_member_without_a_leader_is_taken_out(gateway_factory, tmp_path):
    cluster = EtcdCluster(tmp_path / "etcd", size=2)
    cluster.start(timeout=30)
    try:
        gw = start_gateway(gateway_factory, cluster, "--health-check-interval=1s",
                           "--retry-delay=1s")
        survivor = cluster.members[0].client_addr
        cluster.kill(1)  # two voters, one left: no quorum, and soon no leader

        def out_for_no_leader():
            row = endpoints_json(gw)[survivor]
            return row["state"] == "down" and "no leader" in row["last_error"]
        wait_until(out_for_no_leader, 20, "the member without a leader stayed in rotation")
        cluster.restart(1)
        wait_until(lambda: endpoints_json(gw)[survivor]["state"] == "up", 20,
                   "the member was not readmitted once it had a leader again")
    finally:
        cluster.stop()


def test_a_member_with_nospace_stays_in_rotation_for_reads(gateway_factory, tmp_path):
    cluster = EtcdCluster(tmp_path / "etcd", size=1, extra_args=["--quota-backend-bytes=1048576"])
    cluster.start(timeout=30)
    try:
        member = cluster.members[0].client_addr
        assert cluster.etcdctl("put", "kept", "v", endpoints=member).returncode == 0
        fill_until_nospace(member)
        gw = start_gateway(gateway_factory, cluster, "--health-check-interval=1s")
        wait_until(lambda: endpoints_json(gw)[member]["alarms"] == ["NOSPACE"], 10,
                   "the NOSPACE alarm is not shown")
        assert endpoints_json(gw)[member]["state"] == "up"
        assert gw.find_logs("endpoint reports an alarm")[0]["alarms"] == ["NOSPACE"]
        got = cluster.etcdctl("get", "kept", "--print-value-only", endpoints=gw.listen)
        assert (got.returncode, got.stdout.strip()) == (0, "v")
        refused = cluster.etcdctl("put", "more", "v", endpoints=gw.listen)
        assert refused.returncode != 0 and "space exceeded" in refused.stderr
    finally:
        cluster.stop()


def fill_until_nospace(member: str, limit: int = 400) -> None:
    """Put 64 KiB values straight to the member until etcd raises NOSPACE."""
    value = base64.b64encode(b"x" * 65536).decode()
    for n in range(limit):
        body = json.dumps({"key": base64.b64encode(f"fill{n}".encode()).decode(),
                           "value": value}).encode()
        request = urllib.request.Request(f"http://{member}/v3/kv/put", data=body,
                                         method="POST")
        try:
            with urllib.request.urlopen(request, timeout=5) as resp:
                answer = resp.read()
        except urllib.error.HTTPError as exc:
            answer = exc.read()
        if b"space exceeded" in answer:
            return
    raise AssertionError(f"no NOSPACE after {limit} puts of 64 KiB")


def test_a_member_whose_tls_passes_through_is_checked_with_tcp(gateway_factory, tmp_path):
    pki = ClusterPki(tmp_path / "pki")
    files = MemberTls(ca=pki.ca.cert, cert=pki.member.cert, key=pki.member.key,
                      client_cert=pki.client.cert, client_key=pki.client.key)
    cluster = EtcdCluster(tmp_path / "etcd", size=1, tls=files)
    cluster.start(timeout=30)
    try:
        member = cluster.members[0].client_addr
        gw = start_gateway(gateway_factory, cluster)
        assert gw.find_logs("checking endpoint with tcp: its client port does not answer "
                            "plain HTTP (TLS passes through)")[0]["address"] == member
        assert gw.find_logs("member checks")[0]["tcp"] == [member]
        row = endpoints_json(gw)[member]
        assert (row["state"], row["check"], row["role"]) == ("up", "tcp", "unknown")
        put = cluster.etcdctl("put", "through", "tls", endpoints=gw.listen)
        assert put.returncode == 0, put.stderr
    finally:
        cluster.stop()


def test_an_originated_tls_learner_is_seen_over_https_and_serves_none(
        gateway_factory, tmp_path):
    pki = ClusterPki(tmp_path / "pki")
    files = MemberTls(ca=pki.ca.cert, cert=pki.member.cert, key=pki.member.key,
                      client_cert=pki.client.cert, client_key=pki.client.key)
    cluster = EtcdCluster(tmp_path / "etcd", size=1, tls=files)
    cluster.start(timeout=30)
    try:
        learner = cluster.add_learner()
        listen, metrics = f"127.0.0.1:{free_port()}", f"127.0.0.1:{free_port()}"
        gw = gateway_factory([
            "--endpoints", ",".join(f"https://{a}" for a in cluster.client_endpoints()),
            "--cacert", pki.ca.cert, "--cert", pki.client.cert, "--key", pki.client.key,
            f"--listen-addr={listen}", f"--metrics-addr={metrics}"])
        gw.listen, gw.metrics = listen, metrics
        rows = endpoints_json(gw)
        learner_addr = cluster.members[learner].client_addr
        assert (rows[learner_addr]["state"], rows[learner_addr]["check"]) == ("learner", "etcd")
        voter = cluster.members[0].client_addr
        assert (rows[voter]["state"], rows[voter]["role"]) == ("up", "voter")
        for n in range(10):  # the gateway speaks TLS to the members; clients plain text
            put = subprocess.run(["etcdctl", f"--endpoints={listen}", "put", f"k{n}", "v"],
                                 capture_output=True, text=True, timeout=15,
                                 env={**os.environ, "ETCDCTL_API": "3"})
            assert put.returncode == 0, put.stderr
        assert endpoints_json(gw)[learner_addr]["connections_total"] == 0
    finally:
        cluster.stop()


def test_check_config_default_health_check_is_auto():
    result = run_gateway(["--check-config"])
    assert result.returncode == 0
    row = next(line.split() for line in result.stdout.splitlines()
               if line.startswith("health-check "))
    assert row[1:] == ["auto", "default"]
