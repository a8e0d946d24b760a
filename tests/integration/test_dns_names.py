"""Endpoint host names follow DNS while the gateway runs: real resolution, real binary.

Each gateway runs with a resolver of its own (tests/support/resolv.py): its /etc/hosts
is a file the test rewrites, and its /etc/resolv.conf points at a test-owned dnsmasq,
so getaddrinfo does exactly what it does in production and nothing outside the test
changes. Members are echo servers on loopback addresses (127.0.0.2, 127.0.0.3, ...,
::1), all on one port, so a name's addresses differ only by IP, as in a real cluster.
Backend counts are read with `--health-check none` (tcp checks would add connects of
their own) except where the checks are the subject. No timing goal is asserted: waits
are bounds, generous for a loaded machine.
"""
from __future__ import annotations

import json
import signal
import socket
import urllib.request

import pytest

from tests.support.clients import echo_once, wait_until
from tests.support.echo import EchoServer
from tests.support.gateway_proc import run_gateway
from tests.support.ports import free_port
from tests.support.resolv import PrivateResolution

pytestmark = pytest.mark.integration

CHANGED = "endpoints changed"
FOLLOW = 20.0    # bound on a change reaching the roster (default refresh: 5s)


@pytest.fixture
def resolution(tmp_path):
    with PrivateResolution(tmp_path / "resolution") as private:
        yield private


@pytest.fixture
def port():
    return free_port()


@pytest.fixture
def servers(port):
    """`servers(*hosts)`: echo servers on `port` of each host, stopped at teardown."""
    started: list[EchoServer] = []

    def make(*hosts: str) -> list[EchoServer]:
        out = [EchoServer(port=port, host=h).start() for h in hosts]
        started.extend(out)
        return out

    yield make
    for server in started:
        server.stop()


def start(gateway_factory, resolution, endpoints: str | None, *extra: str,
          metrics: bool = False):
    """A gateway for `endpoints` (None: they come from a config file in `extra`)."""
    listen = f"127.0.0.1:{free_port()}"
    args = ["--listen-addr", listen, *extra]
    if endpoints is not None:
        args += ["--endpoints", endpoints]
    if metrics:
        metrics_addr = f"127.0.0.1:{free_port()}"
        args += ["--metrics-addr", metrics_addr]
    gw = gateway_factory(args, prefix=resolution.prefix())
    gw.addr = listen
    gw.metrics = metrics_addr if metrics else None
    return gw


def clients(gw, n: int) -> None:
    for i in range(n):
        payload = f"client {i}".encode()
        assert echo_once(gw.addr, payload) == payload


def page(gw, path: str):
    with urllib.request.urlopen(f"http://{gw.metrics}{path}", timeout=5) as resp:
        body = resp.read().decode()
    return json.loads(body) if path == "/endpoints" else body


def changes(gw) -> list[dict]:
    return gw.find_logs(CHANGED)


def wait_change(gw, before: int, timeout: float = FOLLOW) -> dict:
    wait_until(lambda: len(changes(gw)) > before, timeout, f"no {CHANGED!r} logged")
    return changes(gw)[before]


# -- following a name ----------------------------------------------------------------
def test_an_address_changed_in_etc_hosts_is_followed_without_a_signal(
        gateway_factory, resolution, servers, port):
    old, new = servers("127.0.0.2", "127.0.0.3")
    name = resolution.name("member")
    resolution.set_hosts({name: "127.0.0.2"})
    gw = start(gateway_factory, resolution, f"{name}:{port}", "--health-check", "none")
    assert gw.wait_log("ready to proxy client requests", 1)["endpoints"] == [old.addr]
    clients(gw, 5)
    assert (old.accepted, new.accepted) == (5, 0)

    resolution.set_hosts({name: "127.0.0.3"})
    line = wait_change(gw, 0)
    assert line["added"] == [f"{new.addr} ({name}:{port})"]
    assert line["removed"] == [f"{old.addr} ({name}:{port})"]
    assert line["source"] == "DNS"
    clients(gw, 5)
    assert (old.accepted, new.accepted) == (5, 5)
    assert gw.count_log("reloaded") == 0


def test_a_name_with_three_addresses_is_three_members_labelled_by_the_name(
        gateway_factory, resolution, servers, port):
    members = servers("127.0.0.2", "127.0.0.3", "127.0.0.4")
    name = resolution.name("cluster")
    resolution.set_records({name: ["127.0.0.2", "127.0.0.3", "127.0.0.4"]})
    gw = start(gateway_factory, resolution, f"{name}:{port}", "--health-check", "none",
               metrics=True)
    ready = gw.wait_log("ready to proxy client requests", 1)
    assert sorted(ready["endpoints"]) == sorted(m.addr for m in members)
    clients(gw, 9)
    assert [m.accepted for m in members] == [3, 3, 3]
    listed = page(gw, "/endpoints")
    assert sorted(e["endpoint"] for e in listed) == sorted(m.addr for m in members)
    assert {e["label"] for e in listed} == {f"{name}:{port}"}
    assert {e["connections_total"] for e in listed} == {3}


def test_a_dual_stack_name_uses_its_ipv4_and_ipv6_addresses(
        gateway_factory, resolution, servers, port):
    v4, v6 = servers("127.0.0.2", "::1")
    name = resolution.name("dual")
    resolution.set_records({name: ["127.0.0.2", "::1"]})
    gw = start(gateway_factory, resolution, f"{name}:{port}", "--health-check", "none")
    ready = gw.wait_log("ready to proxy client requests", 1)
    assert sorted(ready["endpoints"]) == sorted([v4.addr, f"[::1]:{port}"])
    clients(gw, 4)
    assert (v4.accepted, v6.accepted) == (2, 2)


def test_addresses_that_stay_keep_their_counters_and_a_vanished_one_keeps_its_connection(
        gateway_factory, resolution, servers, port):
    a, b, c = servers("127.0.0.2", "127.0.0.3", "127.0.0.4")
    name = resolution.name("grow")
    resolution.set_records({name: ["127.0.0.2", "127.0.0.3"]})
    gw = start(gateway_factory, resolution, f"{name}:{port}", "--health-check", "none",
               "--endpoints-refresh", "1s", metrics=True)
    clients(gw, 4)
    held = socket.create_connection(("127.0.0.1", int(gw.addr.rsplit(":", 1)[1])), timeout=5)
    held.sendall(b"held")
    assert held.recv(4) == b"held"
    holder = a if a.active else b
    stays = b if holder is a else a

    resolution.set_records({name: [stays.host, "127.0.0.4"]})
    line = wait_change(gw, 0)
    assert line["added"] == [f"{c.addr} ({name}:{port})"]
    assert line["removed"] == [f"{holder.addr} ({name}:{port})"]
    listed = {e["endpoint"]: e for e in page(gw, "/endpoints")}
    assert set(listed) == {stays.addr, c.addr}
    assert listed[stays.addr]["connections_total"] == 2   # kept through the change
    assert listed[c.addr]["connections_total"] == 0
    held.sendall(b"still")   # the vanished member's open connection is left alone
    assert held.recv(5) == b"still"
    held.close()
    clients(gw, 4)
    assert (holder.accepted, stays.accepted, c.accepted) == (3, 4, 2)


def test_a_new_address_is_checked_before_it_takes_clients(
        gateway_factory, resolution, servers, port):
    (live,) = servers("127.0.0.2")
    name = resolution.name("checked")
    resolution.set_records({name: ["127.0.0.2"]})
    gw = start(gateway_factory, resolution, f"{name}:{port}", "--health-check", "tcp",
               "--endpoints-refresh", "1s", "--retry-delay", "1m", metrics=True)
    resolution.set_records({name: ["127.0.0.2", "127.0.0.5"]})  # nobody on .5
    wait_change(gw, 0)
    dead = f"127.0.0.5:{port}"
    wait_until(lambda: {e["endpoint"]: e for e in page(gw, "/endpoints")}[dead]
               ["health_check_failures_total"] > 0, 10, "the new address was never checked")
    clients(gw, 10)
    entry = {e["endpoint"]: e for e in page(gw, "/endpoints")}[dead]
    assert entry["state"] == "down"
    assert entry["connections_total"] == 0 and entry["dial_failures_total"] == 0
    assert gw.count_log("rejected client: no endpoint could be reached") == 0


# -- when a name fails ---------------------------------------------------------------
def test_a_name_that_stops_resolving_keeps_serving_its_last_addresses(
        gateway_factory, resolution, servers, port):
    (member,) = servers("127.0.0.2")
    name = resolution.name("fading")
    label = f"{name}:{port}"
    resolution.set_records({name: "127.0.0.2"})
    gw = start(gateway_factory, resolution, label, "--health-check", "none",
               "--endpoints-refresh", "1s", metrics=True)
    resolution.set_records({})   # NXDOMAIN from now on
    line = gw.wait_log("endpoint name does not resolve; keeping its last known addresses",
                       FOLLOW)
    assert line["name"] == label and line["addresses"] == [member.addr]
    clients(gw, 3)
    assert member.accepted == 3
    assert [e["endpoint"] for e in page(gw, "/endpoints")] == [member.addr]
    wait_until(lambda: f'etcd_gateway_endpoint_name_resolution_failures_total{{name="{label}"}} '
               in page(gw, "/metrics"), FOLLOW, "failed lookups are not counted")
    assert changes(gw) == []

    resolution.set_records({name: "127.0.0.2"})
    assert gw.wait_log("endpoint name resolves again", FOLLOW)["name"] == label
    assert gw.count_log("endpoint name does not resolve; keeping its last known "
                        "addresses") == 1   # logged once per outage, not per lookup


def test_a_failed_member_reached_by_name_is_resolved_again_at_once(
        gateway_factory, resolution, servers, port):
    old, new = servers("127.0.0.2", "127.0.0.3")
    name = resolution.name("moved")
    resolution.set_records({name: "127.0.0.2"})
    gw = start(gateway_factory, resolution, f"{name}:{port}", "--health-check", "none",
               "--endpoints-refresh", "0")   # no periodic lookups: only the failure
    resolution.set_records({name: "127.0.0.3"})
    old.stop()
    try:
        echo_once(gw.addr, b"meets the dead member")
    except OSError:
        pass   # the only member is dead: this client is refused
    gw.wait_log("member reached by name failed: resolving its name again", 10)
    line = wait_change(gw, 0)
    assert line["added"] == [f"{new.addr} ({name}:{port})"]
    clients(gw, 3)
    assert new.accepted == 3


def test_sighup_resolves_names_again(gateway_factory, resolution, servers, port):
    old, new = servers("127.0.0.2", "127.0.0.3")
    name = resolution.name("reloaded")
    resolution.set_hosts({name: "127.0.0.2"})
    gw = start(gateway_factory, resolution, f"{name}:{port}", "--health-check", "none",
               "--endpoints-refresh", "0")
    resolution.set_hosts({name: "127.0.0.3"})
    gw.signal(signal.SIGHUP)
    line = wait_change(gw, 0)
    assert line["added"] == [f"{new.addr} ({name}:{port})"]
    clients(gw, 2)
    assert (old.accepted, new.accepted) == (0, 2)


def test_a_name_that_does_not_resolve_at_start_is_a_one_line_error(resolution):
    name = resolution.name("nowhere")
    res = run_gateway(["--listen-addr", f"127.0.0.1:{free_port()}",
                       "--endpoints", f"{name}:2379"], prefix=resolution.prefix(), timeout=20)
    assert res.returncode == 2, res.stderr
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1, res.stderr
    assert "--endpoints" in lines[0] and f"{name}:2379" in lines[0]


def test_a_reload_to_a_name_that_does_not_resolve_yet_keeps_serving_until_it_does(
        gateway_factory, resolution, servers, port, tmp_path):
    old, new = servers("127.0.0.2", "127.0.0.3")
    first, second = resolution.name("first"), resolution.name("second")
    resolution.set_hosts({first: "127.0.0.2"})
    conf = tmp_path / "gateway.conf"
    conf.write_text(f"endpoints = {first}:{port}\n")
    gw = start(gateway_factory, resolution, None, "-c", str(conf), "--health-check", "none",
               "--endpoints-refresh", "1s")
    conf.write_text(f"endpoints = {second}:{port}\n")
    gw.signal(signal.SIGHUP)
    assert gw.wait_log("endpoint name does not resolve; keeping its last known addresses",
                       FOLLOW)["name"] == f"{second}:{port}"
    clients(gw, 2)
    assert (old.accepted, new.accepted) == (2, 0)   # never an empty roster

    resolution.set_hosts({second: "127.0.0.3"})
    line = wait_change(gw, 0)
    assert line["added"] == [f"{new.addr} ({second}:{port})"]
    assert line["removed"] == [f"{old.addr} ({first}:{port})"]
    clients(gw, 2)
    assert (old.accepted, new.accepted) == (2, 2)
