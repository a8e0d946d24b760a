"""The HTTP server on a real loop and real sockets; and `etcd-gatewayd status` against it.

The loop runs in the test thread (as in the master); the clients run in a helper thread,
except for the status tests, where the server runs in a helper thread (test only).
"""
from __future__ import annotations

import io
import logging
import os
import socket
import threading
import time
import urllib.error
import urllib.request
from typing import Any, Callable

import pytest

from gateway import status
from gateway.addresses import HostPort
from gateway.health import (C_ACTIVE, C_BYTES_RECEIVED, C_BYTES_SENT, C_CONNECTIONS,
                            CheckKind, Endpoint, HealthTable, MemberAlarm,
                            MemberRole)
from gateway.httpd import HttpServer, bind_http, parse_request_line
from gateway.listeners import ListenError
from gateway.loop import Loop
from gateway.metrics import GatewayInfo, MetricsApp

BIG = bytes(range(256)) * (4 * 4096)  # 4 MiB: more than a socket buffer takes at once
OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def handler(method: str, path: str) -> tuple[int, str, bytes]:
    if path == "/":
        return 200, "text/plain; charset=utf-8", b"hello\n"
    if path == "/big":
        return 200, "application/octet-stream", BIG
    if path == "/boom":
        raise RuntimeError("page exploded")
    if path == "/badtype":
        return 200, "text/plain", "not bytes"  # type: ignore[return-value]
    if path == "/seen":
        return 200, "text/plain", f"{method} {path}".encode()
    return 404, "text/plain", b"not found\n"


class Served:
    def __init__(self, **kwargs: Any) -> None:
        self.loop = Loop()
        self.sock = bind_http(HostPort("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.server = HttpServer(self.loop, self.sock, handler, **kwargs)
        self.url = f"http://127.0.0.1:{self.port}"

    def run(self, client: Callable[[], Any], limit: float = 15.0) -> Any:
        """Drive the loop here while `client` runs in a thread; return its result."""
        result: dict[str, Any] = {}

        def call() -> None:
            try:
                result["value"] = client()
            except BaseException as exc:  # noqa: BLE001 - re-raised in the test thread
                result["error"] = exc

        thread = threading.Thread(target=call, daemon=True)
        thread.start()
        deadline = time.monotonic() + limit
        while thread.is_alive() and time.monotonic() < deadline:
            self.loop.run_once(0.05)
        thread.join(1.0)
        assert not thread.is_alive(), "client did not finish"
        if "error" in result:
            raise result["error"]
        return result["value"]

    def settle(self, limit: float = 3.0) -> int:
        """Drive the loop until every connection is closed (clients close after the
        answer; the server lingers until it sees that); return how many remain."""
        deadline = time.monotonic() + limit
        while self.server.connections and time.monotonic() < deadline:
            self.loop.run_once(0.05)
        return self.server.connections

    def close(self) -> None:
        self.server.close()
        self.loop.close()


@pytest.fixture
def served():
    s = Served(timeout=0.5)
    yield s
    s.close()


def get(url: str, method: str = "GET", data: bytes | None = None):
    request = urllib.request.Request(url, method=method, data=data)
    try:
        with OPENER.open(request, timeout=10) as response:
            return response.status, dict(response.headers), response.read()
    except urllib.error.HTTPError as exc:
        with exc:
            return exc.code, dict(exc.headers), exc.read()


def raw(port: int, payload: bytes, timeout: float = 10.0) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        sock.sendall(payload)
        chunks = []
        while True:
            data = sock.recv(65536)
            if not data:
                return b"".join(chunks)
            chunks.append(data)


def test_get_answers_with_status_headers_and_body(served):
    code, headers, body = served.run(lambda: get(served.url + "/"))
    assert (code, body) == (200, b"hello\n")
    assert headers["Content-Type"] == "text/plain; charset=utf-8"
    assert headers["Content-Length"] == "6"
    assert headers["Connection"] == "close"


def test_query_string_is_not_part_of_the_path(served):
    code, _, body = served.run(lambda: get(served.url + "/seen?x=1&y=2#frag"))
    assert (code, body) == (200, b"GET /seen")


def test_unknown_path_is_404(served):
    code, _, _ = served.run(lambda: get(served.url + "/nope"))
    assert code == 404


def test_post_is_405_with_allow(served):
    code, headers, _ = served.run(lambda: get(served.url + "/", "POST", b"x=1"))
    assert code == 405
    assert headers["Allow"] == "GET, HEAD"


def test_head_has_the_length_but_no_body(served):
    reply = served.run(lambda: raw(served.port, b"HEAD / HTTP/1.1\r\nHost: x\r\n\r\n"))
    head, _, body = reply.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200 OK")
    assert b"Content-Length: 6" in head
    assert body == b""


def test_garbage_request_line_is_400(served):
    reply = served.run(lambda: raw(served.port, b"hello there\r\n\r\n"))
    assert reply.startswith(b"HTTP/1.1 400 ")


def test_oversized_head_is_431(served):
    big_header = b"GET / HTTP/1.1\r\nX-Big: " + b"a" * 9000 + b"\r\n\r\n"
    assert served.run(lambda: raw(served.port, big_header)).startswith(b"HTTP/1.1 431 ")
    endless = b"GET / HTTP/1.1\r\nX-Big: " + b"a" * 64000  # never ends, much too big
    assert served.run(lambda: raw(served.port, endless)).startswith(b"HTTP/1.1 431 ")


def test_large_body_is_written_without_blocking(served):
    def slow_reader() -> tuple[int, bytes]:
        with socket.socket() as sock:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 65536)  # no autotuning
            sock.settimeout(10)
            sock.connect(("127.0.0.1", served.port))
            sock.sendall(b"GET /big HTTP/1.1\r\n\r\n")
            time.sleep(0.2)  # the server fills the socket buffers and must wait ...
            code, _, _ = get(served.url + "/")  # ... while serving others meanwhile
            chunks = []
            while data := sock.recv(65536):
                chunks.append(data)
            return code, b"".join(chunks)

    served.server.timeout = 5.0
    code, reply = served.run(slow_reader)
    assert code == 200
    head, _, body = reply.partition(b"\r\n\r\n")
    assert f"Content-Length: {len(BIG)}".encode() in head
    assert body == BIG


def test_a_silent_client_is_closed_after_the_timeout(served):
    def idle() -> float:
        with socket.create_connection(("127.0.0.1", served.port), timeout=10) as sock:
            start = time.monotonic()
            assert sock.recv(100) == b""
            return time.monotonic() - start

    assert 0.35 < served.run(idle) < 3.0
    assert served.server.connections == 0


def test_a_client_stalling_mid_head_is_closed_after_the_timeout(served):
    def stall() -> bytes:
        with socket.create_connection(("127.0.0.1", served.port), timeout=10) as sock:
            sock.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n")
            return sock.recv(100)

    assert served.run(stall) == b""


def test_many_concurrent_clients(served):
    results: list[int] = []
    lock = threading.Lock()

    def one() -> None:
        code, _, body = get(served.url + "/")
        assert body == b"hello\n"
        with lock:
            results.append(code)

    def many() -> None:
        threads = [threading.Thread(target=one) for _ in range(40)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(10)

    served.run(many)
    assert results == [200] * 40
    assert served.settle() == 0


def test_connections_over_the_limit_are_closed_at_once():
    s = Served(timeout=5.0, max_connections=4)
    try:
        def crowd() -> float:
            idle = [socket.create_connection(("127.0.0.1", s.port)) for _ in range(4)]
            time.sleep(0.3)  # let the server accept them
            try:
                with socket.create_connection(("127.0.0.1", s.port), timeout=5) as extra:
                    start = time.monotonic()
                    try:
                        assert extra.recv(100) == b""
                    except ConnectionResetError:
                        pass
                    return time.monotonic() - start
            finally:
                for sock in idle:
                    sock.close()

        assert s.run(crowd) < 2.0
        assert s.settle() == 0  # the idle ones hung up
        code, _, _ = s.run(lambda: get(s.url + "/"))  # and it recovers
        assert code == 200
    finally:
        s.close()


def test_a_raising_handler_gives_500_and_the_server_keeps_serving(served, caplog):
    with caplog.at_level(logging.ERROR, logger="etcd-gatewayd.metrics"):
        code, _, _ = served.run(lambda: get(served.url + "/boom"))
    assert code == 500
    assert any(r.getMessage() == "HTTP handler failed" for r in caplog.records)
    assert served.run(lambda: get(served.url + "/badtype"))[0] == 500
    code, _, body = served.run(lambda: get(served.url + "/"))
    assert (code, body) == (200, b"hello\n")


def test_close_unregisters_and_closes_everything():
    s = Served(timeout=5.0)
    client = socket.create_connection(("127.0.0.1", s.port))
    deadline = time.monotonic() + 5
    while s.server.connections == 0 and time.monotonic() < deadline:
        s.loop.run_once(0.05)
    assert s.server.connections == 1
    s.server.close()
    assert not list(s.loop.registered())
    client.settimeout(5)
    try:
        assert client.recv(10) == b""
    except ConnectionResetError:
        pass
    client.close()
    with pytest.raises(OSError):
        socket.create_connection(("127.0.0.1", s.port), timeout=2).close()
    s.loop.close()


def test_a_forked_child_drops_its_copies_without_disturbing_the_parent(served):
    holder = socket.create_connection(("127.0.0.1", served.port))
    deadline = time.monotonic() + 5
    while served.server.connections == 0 and time.monotonic() < deadline:
        served.loop.run_once(0.05)
    pid = os.fork()
    if pid == 0:
        try:
            served.server.close_after_fork()
        finally:
            os._exit(0)
    os.waitpid(pid, 0)
    holder.sendall(b"GET / HTTP/1.1\r\n\r\n")

    def read_holder() -> bytes:
        holder.settimeout(10)
        data = b""
        while chunk := holder.recv(4096):
            data += chunk
        return data

    assert served.run(read_holder).endswith(b"hello\n")
    holder.close()
    code, _, _ = served.run(lambda: get(served.url + "/"))
    assert code == 200


def test_parse_request_line():
    assert parse_request_line(b"GET /metrics?x HTTP/1.1") == ("GET", "/metrics")
    assert parse_request_line(b"GET http://h:1/health HTTP/1.0") == ("GET", "/health")
    assert parse_request_line(b"GET metrics HTTP/1.1") is None
    assert parse_request_line(b"GET /") is None


def test_bind_http_errors_name_the_option():
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen(1)
        port = busy.getsockname()[1]
        with pytest.raises(ListenError, match=r"^option --metrics-addr: cannot listen on "
                                              rf"127\.0\.0\.1:{port}: "):
            bind_http(HostPort("127.0.0.1", port))
    with pytest.raises(ListenError, match="--metrics-addr: cannot resolve"):
        bind_http(HostPort("no-such-host.invalid", 9100))


def test_bind_http_ipv6_literal():
    if not socket.has_ipv6:
        pytest.skip("no IPv6")
    try:
        sock = bind_http(HostPort("::1", 0))
    except ListenError:
        pytest.skip("no IPv6 loopback")
    with sock:
        assert sock.family == socket.AF_INET6
        assert not sock.getblocking()
        assert sock.getsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR)


# -- etcd-gatewayd status ----------------------------------------------------------------
class Background:
    """A MetricsApp served by a loop in a helper thread (tests only)."""

    def __init__(self) -> None:
        self.table = HealthTable(max_workers=4)
        roster = self.table.publish([
            Endpoint("127.0.0.1:2379", socket.AF_INET, "127.0.0.1", 2379),
            Endpoint("127.0.0.1:22379", socket.AF_INET, "127.0.0.1", 22379)])
        self.slots = [e.slot for e in roster]
        for slot in self.slots:  # as the master's first checks leave them
            self.table.set_role(slot, MemberRole.VOTER)
            self.table.set_check_kind(slot, CheckKind.ETCD)
        self.worker = self.table.claim_worker_slot(os.getpid())
        self.app = MetricsApp(self.table, lambda: GatewayInfo(
            workers=self.table.live_workers(), desired_workers=1, reloads_total=0,
            cpu_offsets={}, version="test"))
        self.loop = Loop()
        sock = bind_http(HostPort("127.0.0.1", 0))
        self.addr = f"127.0.0.1:{sock.getsockname()[1]}"
        self.server = HttpServer(self.loop, sock, self.app.handle)
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        while not self.stop.is_set():
            self.loop.run_once(0.05)

    def add(self, slot: int, counter: int, n: int) -> None:
        self.table.add_at(self.table.counter_offset(self.worker, slot, counter), n)

    def close(self) -> None:
        self.stop.set()
        self.thread.join(5)
        self.server.close()
        self.loop.close()


@pytest.fixture
def gateway():
    bg = Background()
    yield bg
    bg.close()


def run_status(argv: list[str], environ: dict[str, str] | None = None):
    out, err = io.StringIO(), io.StringIO()
    code = status.main(argv, environ=environ or {}, out=out, err=err)
    return code, out.getvalue(), err.getvalue()


def test_status_prints_the_table_and_exits_0_while_an_endpoint_is_up(gateway):
    a, b = gateway.slots
    gateway.add(a, C_CONNECTIONS, 17)
    gateway.add(a, C_ACTIVE, 2)
    gateway.add(a, C_BYTES_SENT, 1258291)        # 1.2 MiB
    gateway.add(a, C_BYTES_RECEIVED, 512)
    gateway.table.mark_down(b, "connection refused")
    code, out, err = run_status(["status", "--metrics-addr", gateway.addr])
    assert (code, err) == (0, "")
    lines = out.splitlines()
    assert lines[0].split() == ["ENDPOINT", "STATE", "CHECK", "ACTIVE", "CONNECTIONS",
                                "DIAL-FAILS", "CHECK-FAILS", "SENT", "RECEIVED", "LAST-CHANGE",
                                "LAST-ERROR"]
    first = lines[1].split()
    assert first[:7] == ["127.0.0.1:2379", "up", "etcd", "2", "17", "0", "0"]
    assert " ".join(first[7:11]) == "1.2 MiB 512 B"
    assert first[11:] == ["0s", "ago", "-"]
    second = lines[2]
    assert second.startswith("127.0.0.1:22379") and " down " in second
    assert second.endswith("connection refused")
    assert lines[3].startswith("1 of 2 endpoints up; gateway healthy")


def test_status_shows_a_learner_and_the_alarms_a_member_reports(gateway):
    a, b = gateway.slots
    gateway.table.set_role(b, MemberRole.LEARNER)
    gateway.table.set_alarms(a, MemberAlarm.NOSPACE)
    code, out, _ = run_status(["--metrics-addr", gateway.addr])
    rows = {line.split()[0]: line.split() for line in out.splitlines()[1:3]}
    assert rows["127.0.0.1:22379"][1:3] == ["learner", "etcd"]
    assert rows["127.0.0.1:2379"][1] == "up,NOSPACE"
    assert code == 0 and out.splitlines()[-1].startswith("1 of 2 endpoints up")


def test_status_exits_1_when_every_endpoint_is_down(gateway):
    for slot in gateway.slots:
        gateway.table.mark_down(slot, "refused")
    code, out, _ = run_status(["--metrics-addr", gateway.addr])
    assert code == 1
    assert out.splitlines()[-1].startswith("0 of 2 endpoints up; gateway unhealthy")


def test_status_reads_the_address_from_the_config_file_or_the_environment(gateway, tmp_path):
    conf = tmp_path / "gateway.conf"
    conf.write_text(f"metrics-addr = {gateway.addr}\n")
    assert run_status(["-c", str(conf)])[0] == 0
    assert run_status([], {"ETCD_GATEWAY_METRICS_ADDR": gateway.addr})[0] == 0
    bare = tmp_path / "bare.conf"
    bare.write_text("listen-addr = 127.0.0.1:23790\n")
    assert run_status(["-c", str(bare)], {"ETCD_GATEWAY_METRICS_ADDR": gateway.addr})[0] == 0


def test_status_without_an_address_is_a_usage_error(tmp_path):
    code, out, err = run_status([])
    assert code == 2 and out == ""
    assert err.startswith("etcd-gatewayd status: give --metrics-addr")
    assert len(err.splitlines()) == 1
    assert run_status(["--metrics-addr", "nonsense"])[0] == 2
    assert run_status(["-c", str(tmp_path / "missing.conf")])[0] == 2


def test_status_against_nothing_is_one_line_and_exit_1():
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    code, out, err = run_status(["--metrics-addr", f"127.0.0.1:{port}"])
    assert code == 1 and out == ""
    assert len(err.splitlines()) == 1
    assert f"127.0.0.1:{port}" in err


def test_human_formats():
    assert status.human_bytes(0) == "0 B"
    assert status.human_bytes(1023) == "1023 B"
    assert status.human_bytes(1024) == "1.0 KiB"
    assert status.human_bytes(1258291) == "1.2 MiB"
    assert status.human_bytes(5 * 1024 ** 3) == "5.0 GiB"
    assert status.human_age(4.2) == "4s ago"
    assert status.human_age(200) == "3m ago"
    assert status.human_age(7300) == "2h ago"
    assert status.human_age(3 * 86400 + 5) == "3d ago"
    assert status.base_url(HostPort("", 9100)) == "http://127.0.0.1:9100"
    assert status.base_url(HostPort("::", 9100)) == "http://[::1]:9100"
