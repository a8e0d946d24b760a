"""Reload, drain, supervision and systemd integration, with real signals."""
import os
import signal
import socket
import subprocess
import sys
import time

import psutil
import pytest

from tests.support.echo import EchoServer
from tests.support.gateway_proc import READY_MSG, REPO, gateway_command, run_gateway, stop_process_group
from tests.support.ports import free_port
from tests.support.stream import ConnectionStream
from tests.support.clients import accepts, roundtrip, wait_until

pytestmark = pytest.mark.integration








@pytest.fixture
def echoes():
    with EchoServer() as a, EchoServer() as b:
        yield a, b


def started(gateway_factory, tmp_path, conf: str, *extra, env=None, wait_for=READY_MSG):
    """A gateway reading `conf` (rewritten by tests before SIGHUP)."""
    port = free_port()
    path = tmp_path / "gateway.conf"
    path.write_text(conf)
    gw = gateway_factory(["-c", str(path), f"--listen-addr=127.0.0.1:{port}", *extra], env=env,
                         wait_for=wait_for)
    gw.conf = path
    gw.sockaddr = ("127.0.0.1", port)
    return gw


def reload(gw, conf: str | None = None, expect: str = "reloaded"):
    before = gw.count_log(expect)
    if conf is not None:
        gw.conf.write_text(conf)
    gw.signal(signal.SIGHUP)
    wait_until(lambda: gw.count_log(expect) > before, 10, f"no {expect!r} after SIGHUP")
    return gw.find_logs(expect)[-1]


# -- reload ---------------------------------------------------------------------------
def test_reload_switches_endpoints_and_an_open_connection_keeps_relaying(
        gateway_factory, tmp_path, echoes):
    a, b = echoes
    gw = started(gateway_factory, tmp_path, f"endpoints = {a.addr}\n", "--health-check=none")
    old = socket.create_connection(gw.sockaddr, timeout=5)
    assert roundtrip(old, b"before") == b"before"
    line = reload(gw, f"endpoints = {b.addr}\n")
    assert line["endpoints"] == [b.addr]
    assert line["changed"]["endpoints"] == [a.addr, b.addr]
    with socket.create_connection(gw.sockaddr, timeout=5) as new:
        assert roundtrip(new, b"new") == b"new"
    assert b.accepted == 1
    assert roundtrip(old, b"still here") == b"still here"   # untouched by the reload
    old.close()


def test_reload_with_a_broken_file_keeps_the_process_and_old_endpoints(
        gateway_factory, tmp_path, echoes):
    a, _ = echoes
    gw = started(gateway_factory, tmp_path, f"endpoints = {a.addr}\n", "--health-check=none")
    line = reload(gw, "endpoints = 127.0.0.1:99999\n",
                  expect="reload failed; keeping the running configuration")
    assert "--endpoints" in line["error"]
    reload(gw, f"endpoints = {a.addr}\nno-such-key = 1\n",
           expect="reload failed; keeping the running configuration")
    gw.conf.unlink()
    reload(gw, expect="reload failed; keeping the running configuration")
    assert gw.running
    with socket.create_connection(gw.sockaddr, timeout=5) as s:
        assert roundtrip(s, b"old endpoints") == b"old endpoints"
    assert a.accepted == 1


def test_reload_keeps_the_health_mark_of_an_endpoint_that_remains(
        gateway_factory, tmp_path, echoes):
    a, b = echoes
    dead = f"127.0.0.1:{free_port()}"
    gw = started(gateway_factory, tmp_path, f"endpoints = {dead},{a.addr}\n",
                 "--retry-delay=1m")
    for _ in range(4):
        with socket.create_connection(gw.sockaddr, timeout=5) as s:
            roundtrip(s, b"x")
    gw.wait_log("deactivated endpoint", 5)
    reload(gw, f"endpoints = {dead},{a.addr},{b.addr}\n")
    for _ in range(10):
        with socket.create_connection(gw.sockaddr, timeout=5) as s:
            assert roundtrip(s, b"y") == b"y"
    assert gw.count_log("deactivated endpoint") == 1   # still down: not dialled again


def test_reload_rebinds_a_changed_listen_address(gateway_factory, tmp_path, echoes):
    a, _ = echoes
    port = free_port()
    path = tmp_path / "gateway.conf"
    path.write_text(f"endpoints = {a.addr}\nlisten-addr = 127.0.0.1:{port}\n")
    gw = gateway_factory(["-c", str(path)])
    gw.conf = path
    old = socket.create_connection(("127.0.0.1", port), timeout=5)
    assert roundtrip(old, b"old port") == b"old port"
    new_port = free_port()
    line = reload(gw, f"endpoints = {a.addr}\nlisten-addr = 127.0.0.1:{new_port}\n")
    assert "listen-addr" in line["changed"]
    with socket.create_connection(("127.0.0.1", new_port), timeout=5) as s:
        assert roundtrip(s, b"new port") == b"new port"
    assert roundtrip(old, b"kept") == b"kept"
    old.close()
    wait_until(lambda: not accepts(("127.0.0.1", port)), 10, "the old port stays open")


def test_reload_to_a_taken_listen_address_rolls_back(gateway_factory, tmp_path, echoes):
    a, _ = echoes
    port = free_port()
    path = tmp_path / "gateway.conf"
    path.write_text(f"endpoints = {a.addr}\nlisten-addr = 127.0.0.1:{port}\n")
    gw = gateway_factory(["-c", str(path)])
    gw.conf = path
    with socket.create_server(("127.0.0.1", 0)) as taken:
        busy = taken.getsockname()[1]
        line = reload(gw, f"endpoints = {a.addr}\nlisten-addr = 127.0.0.1:{busy}\n",
                      expect="reload failed; keeping the running configuration")
        assert str(busy) in line["error"]
    with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
        assert roundtrip(s, b"same port") == b"same port"


def test_reload_applies_a_changed_worker_count(gateway_factory, tmp_path, echoes):
    a, _ = echoes
    gw = started(gateway_factory, tmp_path, f"endpoints = {a.addr}\nworkers = 2\n")
    assert len(gw.worker_pids()) == 2
    reload(gw, f"endpoints = {a.addr}\nworkers = 3\n")
    wait_until(lambda: len(gw.worker_pids()) == 3, 10, "workers not raised to 3")
    reload(gw, f"endpoints = {a.addr}\nworkers = 1\n")
    wait_until(lambda: len(gw.worker_pids()) == 1, 10, "workers not lowered to 1")


def test_ten_reloads_under_load_fail_no_connection(gateway_factory, tmp_path, echoes):
    a, b = echoes
    confs = [f"endpoints = {a.addr}\ndial-timeout = 1s\n",
             f"endpoints = {a.addr},{b.addr}\ndial-timeout = 2s\n"]
    gw = started(gateway_factory, tmp_path, confs[0])
    with ConnectionStream(gw.sockaddr) as stream:
        for i in range(10):
            reload(gw, confs[(i + 1) % 2])
            time.sleep(0.2)
    assert stream.failures == []
    assert stream.ok > 50


# -- drain ----------------------------------------------------------------------------
def test_sigterm_drains_open_connections_then_exits_0_with_the_port_closed(
        gateway_factory, tmp_path, echoes):
    a, _ = echoes
    gw = started(gateway_factory, tmp_path, f"endpoints = {a.addr}\n",
                 "--shutdown-timeout=20s")
    conn = socket.create_connection(gw.sockaddr, timeout=5)
    assert roundtrip(conn, b"before") == b"before"
    gw.signal(signal.SIGTERM)
    gw.wait_log("draining connections", 5)
    wait_until(lambda: not accepts(gw.sockaddr), 5, "the port stays open while draining")
    for i in range(5):                       # the open connection keeps working
        assert roundtrip(conn, b"during %d" % i) == b"during %d" % i
        time.sleep(0.1)
    assert gw.running
    conn.close()
    assert gw.wait(10) == 0


def test_drain_is_bounded_by_the_shutdown_timeout(gateway_factory, tmp_path, echoes):
    a, _ = echoes
    gw = started(gateway_factory, tmp_path, f"endpoints = {a.addr}\n",
                 "--shutdown-timeout=1s")
    conn = socket.create_connection(gw.sockaddr, timeout=5)
    assert roundtrip(conn, b"x") == b"x"
    gw.signal(signal.SIGTERM)
    assert gw.wait(10) == 0
    assert conn.recv(10) in (b"",)           # closed by the gateway
    conn.close()


def test_a_second_sigterm_ends_the_drain_at_once(gateway_factory, tmp_path, echoes):
    a, _ = echoes
    gw = started(gateway_factory, tmp_path, f"endpoints = {a.addr}\n",
                 "--shutdown-timeout=60s")
    conn = socket.create_connection(gw.sockaddr, timeout=5)
    assert roundtrip(conn, b"x") == b"x"
    gw.signal(signal.SIGTERM)
    gw.wait_log("draining connections", 5)
    gw.signal(signal.SIGTERM)
    assert gw.wait(10) == 0
    conn.close()


def test_sigquit_stops_at_once(gateway_factory, tmp_path, echoes):
    a, _ = echoes
    gw = started(gateway_factory, tmp_path, f"endpoints = {a.addr}\n",
                 "--shutdown-timeout=60s")
    conn = socket.create_connection(gw.sockaddr, timeout=5)
    assert roundtrip(conn, b"x") == b"x"
    gw.signal(signal.SIGQUIT)
    assert gw.wait(10) == 0
    conn.close()


# -- supervision ----------------------------------------------------------------------
def kill_idle_worker(victim: int, baseline: int) -> int:
    """SIGKILL a worker at a moment it holds no session: stop it, check its fds are at
    the idle baseline (counted before any client came: counted later, it may include
    a session's sockets), kill. (A session inside a killed process cannot be saved by
    any proxy; what must hold is that no new client notices.)"""
    proc = psutil.Process(victim)
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        os.kill(victim, signal.SIGSTOP)
        time.sleep(0.05)
        if proc.num_fds() <= baseline:
            os.kill(victim, signal.SIGKILL)
            return victim
        os.kill(victim, signal.SIGCONT)
        time.sleep(0.05)
    raise AssertionError("the worker was never idle")


def test_a_killed_worker_is_replaced_and_no_client_notices(gateway_factory, tmp_path, echoes):
    a, _ = echoes
    gw = started(gateway_factory, tmp_path, f"endpoints = {a.addr}\n", "--workers=2")
    time.sleep(1.0)   # idle baseline: no pipes left in the pools
    victim = gw.worker_pids()[0]
    baseline = psutil.Process(victim).num_fds()
    with ConnectionStream(gw.sockaddr, interval=0.01) as stream:
        time.sleep(0.5)
        kill_idle_worker(victim, baseline)
        gw.wait_log("worker died; replacing it", 5)
        wait_until(lambda: len(gw.worker_pids()) == 2 and victim not in gw.worker_pids(),
                   10, "the worker was not replaced")
        time.sleep(0.5)
    assert stream.failures == []
    assert stream.ok > 20


def test_workers_that_keep_dying_make_the_master_exit_non_zero(gateway_factory, tmp_path,
                                                                 echoes):
    a, _ = echoes
    gw = started(gateway_factory, tmp_path, f"endpoints = {a.addr}\n", "--workers=1")
    deadline = time.monotonic() + 20
    while gw.running and time.monotonic() < deadline:
        for pid in gw.worker_pids():
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        time.sleep(0.1)
    assert gw.wait(10) == 1
    line = gw.wait_log("workers keep dying (5 in 10s, last: killed by SIGKILL); giving up", 1)
    assert line["level"] == "error"


def test_workers_exit_when_the_master_is_killed(gateway_factory, tmp_path, echoes):
    a, _ = echoes
    gw = started(gateway_factory, tmp_path, f"endpoints = {a.addr}\n", "--workers=2")
    workers = gw.worker_pids()
    os.kill(gw.pid, signal.SIGKILL)
    wait_until(lambda: not any(psutil.pid_exists(p) and
                               psutil.Process(p).status() != psutil.STATUS_ZOMBIE
                               for p in workers), 5, "workers outlived their master")


def test_sigttin_and_sigttou_add_and_remove_a_worker(gateway_factory, tmp_path, echoes):
    a, _ = echoes
    gw = started(gateway_factory, tmp_path, f"endpoints = {a.addr}\n", "--workers=1")
    gw.signal(signal.SIGTTIN)
    wait_until(lambda: len(gw.worker_pids()) == 2, 5, "SIGTTIN added no worker")
    gw.signal(signal.SIGTTOU)
    wait_until(lambda: len(gw.worker_pids()) == 1, 5, "SIGTTOU removed no worker")


def test_sigusr1_reopens_the_log_file(gateway_factory, tmp_path, echoes):
    a, _ = echoes
    log = tmp_path / "gateway.log"
    gw = started(gateway_factory, tmp_path, f"endpoints = {a.addr}\n", f"--log-file={log}",
                 "--log-level=debug", wait_for=None)
    wait_until(lambda: log.exists() and "ready to proxy" in log.read_text(), 5, "no log file")
    log.rename(tmp_path / "gateway.log.1")
    gw.signal(signal.SIGUSR1)
    wait_until(lambda: log.exists(), 5, "SIGUSR1 did not reopen the log file")
    with socket.create_connection(gw.sockaddr, timeout=5) as s:
        roundtrip(s, b"x")
    wait_until(lambda: "connection closed" in log.read_text(), 5,
               "a worker still writes to the rotated file")


# -- systemd --------------------------------------------------------------------------
def test_systemd_notify_ready_reloading_stopping(gateway_factory, tmp_path, echoes):
    a, _ = echoes
    path = str(tmp_path / "notify.sock")
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    listener.bind(path)
    listener.settimeout(10)
    try:
        gw = started(gateway_factory, tmp_path, f"endpoints = {a.addr}\n",
                     env={"NOTIFY_SOCKET": path})
        ready = listener.recv(4096).decode()
        assert "READY=1" in ready.split("\n")
        assert f"MAINPID={gw.pid}" in ready.split("\n")
        gw.signal(signal.SIGHUP)
        reloading = listener.recv(4096).decode().split("\n")
        assert "RELOADING=1" in reloading
        usec = [f for f in reloading if f.startswith("MONOTONIC_USEC=")]
        assert usec and int(usec[0].split("=")[1]) > 0
        assert listener.recv(4096).decode() == "READY=1"
        gw.signal(signal.SIGTERM)
        assert listener.recv(4096).decode() == "STOPPING=1"
        assert gw.wait(10) == 0
    finally:
        listener.close()


def test_socket_activation_adopts_the_inherited_listener(tmp_path, echoes):
    a, _ = echoes
    server = socket.create_server(("127.0.0.1", 0))
    port = server.getsockname()[1]
    fd = server.fileno()
    err = open(tmp_path / "stderr.log", "wb")
    # as systemd does: the socket on fd 3, LISTEN_PID naming the process that execs
    activate = ("import os, sys; os.dup2(int(sys.argv[1]), 3); "
                "os.environ.update(LISTEN_PID=str(os.getpid()), LISTEN_FDS='1'); "
                "os.execv(sys.argv[2], sys.argv[2:])")
    proc = subprocess.Popen(
        [sys.executable, "-c", activate, str(fd),
         *gateway_command([f"--endpoints={a.addr}", "--listen-addr=127.0.0.1:1"])],
        pass_fds=(fd,), stderr=err, stdin=subprocess.DEVNULL, cwd=REPO,
        start_new_session=True)
    server.close()
    try:
        wait_until(lambda: b"ready to proxy" in (tmp_path / "stderr.log").read_bytes(), 10,
                   "the gateway did not start")
        assert b"adopted listener from systemd" in (tmp_path / "stderr.log").read_bytes()
        with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
            assert roundtrip(s, b"activated") == b"activated"
    finally:
        stop_process_group(proc)
        err.close()


# -- --check-config -------------------------------------------------------------------
def test_check_config_prints_values_and_sources_and_binds_nothing(tmp_path):
    port = free_port()
    path = tmp_path / "gw.conf"
    path.write_text(f"endpoints = 127.0.0.1:2379\nlisten-addr = 127.0.0.1:{port}\n")
    result = run_gateway(["--check-config", "-c", str(path), "--retry-delay=5s"],
                         env={"ETCD_GATEWAY_DIAL_TIMEOUT": "2s"})
    assert result.returncode == 0, result.stderr
    rows = {line.split()[0]: line for line in result.stdout.splitlines() if line.strip()}
    assert "file (" in rows["endpoints"]
    assert rows["retry-delay"].split()[1:] == ["5s", "flag"]
    assert "environment (ETCD_GATEWAY_DIAL_TIMEOUT)" in rows["dial-timeout"]
    assert rows["shutdown-timeout"].split()[1:] == ["30s", "default"]
    assert accepts(("127.0.0.1", port)) is False


def test_check_config_refuses_a_bad_file(tmp_path):
    path = tmp_path / "gw.conf"
    path.write_text("retry-delay = 10\n")
    result = run_gateway(["--check-config", "-c", str(path)])
    assert result.returncode == 2
    assert "--retry-delay" in result.stderr and "Traceback" not in result.stderr


def test_socket_activation_with_no_socket_on_fd_3_is_one_line(tmp_path):
    activate = ("import os, sys; fd = os.open('/dev/null', os.O_RDONLY); os.dup2(fd, 3); "
                "os.environ.update(LISTEN_PID=str(os.getpid()), LISTEN_FDS='1'); "
                "os.execv(sys.argv[1], sys.argv[1:])")
    result = subprocess.run(
        [sys.executable, "-c", activate, *gateway_command(["--endpoints=127.0.0.1:5"])],
        capture_output=True, text=True, timeout=20, cwd=REPO, stdin=subprocess.DEVNULL)
    assert result.returncode == 1
    assert "Traceback" not in result.stderr
    assert "fd 3 is not a socket" in result.stderr


def test_a_reload_that_fails_midway_closes_what_it_opened_and_changes_nothing(
        gateway_factory, tmp_path, echoes):
    a, _ = echoes
    port, metrics, new_metrics = free_port(), free_port(), free_port()
    path = tmp_path / "gateway.conf"
    good = (f"endpoints = {a.addr}\nlisten-addr = 127.0.0.1:{port}\n"
            f"metrics-addr = 127.0.0.1:{metrics}\n")
    path.write_text(good)
    gw = gateway_factory(["-c", str(path)])
    gw.conf = path
    with socket.create_server(("127.0.0.1", 0)) as taken:
        busy = taken.getsockname()[1]
        # the new metrics address binds, then the new listen address fails
        reload(gw, f"endpoints = {a.addr}\nlisten-addr = 127.0.0.1:{busy}\n"
                   f"metrics-addr = 127.0.0.1:{new_metrics}\n",
               expect="reload failed; keeping the running configuration")
    assert not accepts(("127.0.0.1", new_metrics))      # closed again, not leaked
    assert accepts(("127.0.0.1", metrics))
    with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
        assert roundtrip(s, b"unchanged") == b"unchanged"
    reload(gw, good.replace(str(metrics), str(new_metrics)))  # and it can still reload
    wait_until(lambda: accepts(("127.0.0.1", new_metrics)), 5, "metrics did not move")
