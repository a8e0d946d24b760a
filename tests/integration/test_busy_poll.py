"""--busy-poll: after a turn that handled events a worker polls without sleeping for a
bounded time, yielding the CPU between empty polls, then sleeps as usual (strace
attached to the real worker). How long it spins adapts (tests/unit/test_loop.py)."""
import pathlib
import re
import socket
import time

import pytest

from tests.support import syscalls
from tests.support.clients import roundtrip, wait_until
from tests.support.echo import EchoServer
from tests.support.metrics import scrape
from tests.support.ports import free_port, free_ports

pytestmark = pytest.mark.integration

_TIMEOUT = re.compile(r"epoll_wait\(\d+, .*, (-?\d+)\) += (\d+)")
_EMPTY_SPIN = re.compile(r"epoll_wait\(\d+, .*, 0\) += 0")


def trace_requests(gateway_factory, tmp_path, *extra, requests: int = 1,
                   pause: float = 0.0) -> pathlib.Path:
    """strace of the worker's epoll_wait and sched_yield calls for `requests` requests
    in sequence, `pause` seconds apart, and the second of quiet after them."""
    trace = tmp_path / "strace.out"
    with EchoServer() as echo:
        port = free_port()
        gw = gateway_factory([f"--endpoints={echo.addr}", f"--listen-addr=127.0.0.1:{port}",
                              "--workers=1", "--health-check=none", *extra])
        with socket.create_connection(("127.0.0.1", port), timeout=5) as client:
            assert roundtrip(client, b"warm") == b"warm"
            with syscalls.traced(gw.worker_pids()[0], "epoll_wait,sched_yield", trace):
                for _ in range(requests):
                    assert roundtrip(client, b"ping") == b"ping"   # relayed as usual
                    time.sleep(pause)
                time.sleep(1.0)
    return trace


def polls_around_requests(gateway_factory, tmp_path, *extra,
                          requests: int = 1) -> list[tuple[int, int]]:
    """(timeout ms, events) of each epoll_wait of the worker for `requests` requests a
    little apart and the second of quiet after them."""
    trace = trace_requests(gateway_factory, tmp_path, *extra, requests=requests,
                           pause=0.0003 if requests > 1 else 0.0)
    return [(int(m.group(1)), int(m.group(2)))
            for m in map(_TIMEOUT.search, syscalls.lines(trace, "epoll_wait")) if m]


def test_a_busy_polling_worker_polls_without_sleeping_after_an_event(gateway_factory, tmp_path):
    # requests a little apart: the spin starts once one comes within 1ms of the last
    # turn, however slow the first ones are under strace
    polls = polls_around_requests(gateway_factory, tmp_path, "--busy-poll=1ms", requests=30)
    assert any(timeout == 0 for timeout, _ in polls), polls


def test_a_busy_polling_worker_sleeps_again_when_nothing_comes(gateway_factory, tmp_path):
    polls = polls_around_requests(gateway_factory, tmp_path, "--busy-poll=1ms", requests=30)
    last_event = max(i for i, (_, events) in enumerate(polls) if events)
    quiet = polls[last_event + 1:]  # the second after the last request
    assert quiet and quiet[-1][0] > 0, polls  # it went back to sleep
    assert sum(1 for timeout, _ in quiet if timeout == 0) < 1000, \
        "it kept spinning through the quiet second"


def test_a_spinning_worker_yields_the_cpu_after_each_empty_poll(gateway_factory, tmp_path):
    # requests a little apart, within the longest spin: the spin grows until it lasts
    # long enough to catch the next one, polling (and yielding) many times meanwhile
    trace = trace_requests(gateway_factory, tmp_path, "--busy-poll=1ms", requests=30,
                           pause=0.0003)
    calls = syscalls.lines(trace, "(")
    empty = [i for i, line in enumerate(calls) if _EMPTY_SPIN.search(line)]
    assert empty, calls
    # an empty poll is followed by a yield, or ends the spin: the sleeping poll is next
    after = [calls[i + 1] for i in empty if i + 1 < len(calls)]
    assert all(line.startswith("sched_yield") or _sleeping(line) for line in after), calls
    assert any(line.startswith("sched_yield") for line in after), calls


def _sleeping(line: str) -> bool:
    match = _TIMEOUT.search(line)
    return match is not None and int(match.group(1)) != 0


def test_with_busy_poll_0_a_worker_sleeps_as_soon_as_nothing_is_ready(gateway_factory,
                                                                      tmp_path):
    polls = polls_around_requests(gateway_factory, tmp_path, "--busy-poll=0")
    assert sum(1 for timeout, events in polls if timeout == 0 and events == 0) <= 1, polls


def test_the_time_spent_busy_polling_is_exported(gateway_factory):
    port, metrics = free_ports(2)
    with EchoServer() as echo:
        gateway_factory([f"--endpoints={echo.addr}", f"--listen-addr=127.0.0.1:{port}",
                         "--workers=1", "--health-check=none", "--busy-poll=1ms",
                         f"--metrics-addr=127.0.0.1:{metrics}"])
        addr = f"127.0.0.1:{metrics}"
        assert scrape(addr)["etcd_gateway_busy_poll_seconds_total"] == 0
        with socket.create_connection(("127.0.0.1", port), timeout=5) as client:
            for _ in range(30):  # a little apart: the spin grows, then catches them
                assert roundtrip(client, b"ping") == b"ping"
                time.sleep(0.0003)
        # a worker flushes it on its tick (half a second)
        wait_until(lambda: scrape(addr)["etcd_gateway_busy_poll_seconds_total"] > 0, 5.0,
                   "busy polling time never reached /metrics")
