"""Keepalive on both legs at the Go original's cadence (seen by `ss -tnoe`), and the
idle timeout: the real binary, real sockets."""
import re
import signal
import socket
import subprocess
import time

import pytest

from tests.support import syscalls
from tests.support.clients import roundtrip, wait_until
from tests.support.echo import EchoServer
from tests.support.gateway_proc import run_gateway
from tests.support.ports import free_port

pytestmark = pytest.mark.integration

_TIMER = re.compile(r"timer:\(keepalive,([^,]+),")
_UNITS = {"ms": 0.001, "sec": 1.0, "min": 60.0, "h": 3600.0}


def seconds(text: str) -> float:
    """ss's timer text (14sec, 1min59sec, 119min, 999ms) in seconds."""
    return sum(float(n) * _UNITS[u] for n, u in re.findall(r"([\d.]+)(ms|sec|min|h)", text))


def keepalive_timers(worker: int, listen_port: int, member: str) -> tuple[float, float]:
    """(client leg, member leg) keepalive timers of `worker`'s sockets, in seconds."""
    out = subprocess.run(["ss", "-tnoep", "state", "established"], capture_output=True,
                         text=True, timeout=10, check=True).stdout
    legs = [line for line in out.splitlines() if f"pid={worker}," in line]
    client = [leg for leg in legs if f"127.0.0.1:{listen_port} " in leg]
    upstream = [leg for leg in legs if f"{member} " in leg]
    assert len(client) == 1 and len(upstream) == 1, out
    found = []
    for leg in client + upstream:
        match = _TIMER.search(leg)
        assert match, f"no keepalive timer: {leg}"
        found.append(seconds(match.group(1)))
    return found[0], found[1]


def timers_of_a_session(gateway_factory, *extra, conf=None):
    with EchoServer() as echo:
        port = free_port()
        gw = gateway_factory([f"--endpoints={echo.addr}", f"--listen-addr=127.0.0.1:{port}",
                              "--workers=1", "--health-check=none", *extra])
        with socket.create_connection(("127.0.0.1", port), timeout=5) as client:
            assert roundtrip(client, b"k") == b"k"
            return keepalive_timers(gw.worker_pids()[0], port, echo.addr)


def test_both_legs_probe_after_15_seconds_by_default_as_go_does(gateway_factory):
    client, member = timers_of_a_session(gateway_factory)
    assert 0 < client <= 15 and 0 < member <= 15


def test_keepalive_follows_the_option_on_both_legs(gateway_factory):
    client, member = timers_of_a_session(gateway_factory, "--keepalive=40s")
    assert 15 < client <= 40 and 15 < member <= 40


def test_keepalive_0_leaves_the_kernel_defaults(gateway_factory):
    with open("/proc/sys/net/ipv4/tcp_keepalive_time") as f:
        kernel = int(f.read())
    client, member = timers_of_a_session(gateway_factory, "--keepalive=0")
    assert kernel - 120 < client <= kernel and kernel - 120 < member <= kernel  # ss rounds down


def test_a_reload_changes_keepalive_for_new_sessions(gateway_factory, tmp_path):
    with EchoServer() as echo:
        port = free_port()
        conf = tmp_path / "gw.conf"
        conf.write_text("keepalive = 40s\n")
        gw = gateway_factory(["-c", str(conf), f"--endpoints={echo.addr}",
                              f"--listen-addr=127.0.0.1:{port}", "--workers=1",
                              "--health-check=none"])
        conf.write_text("keepalive = 15s\n")
        gw.signal(signal.SIGHUP)
        line = gw.wait_log("reloaded", 10)
        assert line["changed"]["keepalive"] == ["40s", "15s"]
        old = gw.find_logs("started worker")[0]["worker_pid"]
        wait_until(lambda: gw.worker_pids() and old not in gw.worker_pids(), 20,
                   "the worker with the old settings did not leave")
        with socket.create_connection(("127.0.0.1", port), timeout=5) as client:
            assert roundtrip(client, b"k") == b"k"
            timers = keepalive_timers(gw.worker_pids()[0], port, echo.addr)
        assert all(0 < t <= 15 for t in timers)


def setsockopts_of_a_dial(gateway_factory, tmp_path, *extra) -> list[str]:
    """The setsockopt calls the worker makes for one session (strace attached to it)."""
    trace = tmp_path / "strace.out"
    with EchoServer() as echo:
        port = free_port()
        gw = gateway_factory([f"--endpoints={echo.addr}", f"--listen-addr=127.0.0.1:{port}",
                              "--workers=1", "--health-check=none", *extra])
        with syscalls.traced(gw.worker_pids()[0], "setsockopt", trace):
            with socket.create_connection(("127.0.0.1", port), timeout=5) as client:
                assert roundtrip(client, b"k") == b"k"   # the dial's options are set
            wait_until(lambda: "SO_KEEPALIVE" in trace.read_text(), 10,
                       "the dial's setsockopt calls traced")
    return syscalls.lines(trace, "setsockopt(")


def test_keepalive_0_sets_no_timer_on_a_dialled_socket(gateway_factory, tmp_path):
    calls = setsockopts_of_a_dial(gateway_factory, tmp_path, "--keepalive=0")
    assert any("SO_KEEPALIVE" in call for call in calls), calls
    assert not any("TCP_KEEP" in call for call in calls), calls  # the kernel's already


def test_a_dial_sets_only_the_timers_that_differ_from_the_kernels(gateway_factory, tmp_path):
    with open("/proc/sys/net/ipv4/tcp_keepalive_probes") as f:
        kernel_probes = int(f.read())
    calls = setsockopts_of_a_dial(gateway_factory, tmp_path)  # 15 s, 9 probes
    assert any("TCP_KEEPIDLE, [15]" in call for call in calls), calls
    assert any("TCP_KEEPINTVL, [15]" in call for call in calls), calls
    assert any("TCP_KEEPCNT" in call for call in calls) == (kernel_probes != 9), calls


@pytest.mark.parametrize("value", ["500ms", "-1s", "40000s", "15"])
def test_a_bad_keepalive_is_refused_in_one_line(value):
    result = run_gateway([f"--keepalive={value}", "--check-config"])
    assert result.returncode == 2
    assert len(result.stderr.strip().splitlines()) == 1
    assert "--keepalive" in result.stderr and value in result.stderr


def test_a_session_silent_both_ways_is_closed_after_the_idle_timeout(gateway_factory):
    with EchoServer() as echo:
        port = free_port()
        gw = gateway_factory([f"--endpoints={echo.addr}", f"--listen-addr=127.0.0.1:{port}",
                              "--health-check=none", "--idle-timeout=1s",
                              "--log-level=debug"])
        with socket.create_connection(("127.0.0.1", port), timeout=20) as client:
            assert roundtrip(client, b"hello") == b"hello"
            assert client.recv(10) == b""  # the gateway closed it (EOF), within 20 s
        line = gw.wait_log("connection closed", 10)
        assert line["end"].startswith("idle timeout")


def test_a_session_that_keeps_talking_outlives_the_idle_timeout(gateway_factory):
    with EchoServer() as echo:
        port = free_port()
        gateway_factory([f"--endpoints={echo.addr}", f"--listen-addr=127.0.0.1:{port}",
                         "--health-check=none", "--idle-timeout=1s"])
        with socket.create_connection(("127.0.0.1", port), timeout=5) as client:
            end = time.monotonic() + 4
            while time.monotonic() < end:
                assert roundtrip(client, b"still here") == b"still here"
                time.sleep(0.1)
