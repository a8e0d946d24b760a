"""Rapid SIGHUPs with connections held open in every generation: each reload applies
whole, RELOADING=1 is always answered, worker slots run short without an error, and
only settings that workers use replace them."""
import os
import signal
import socket
import time

import pytest

from tests.support.clients import roundtrip, wait_until
from tests.support.echo import EchoServer
from tests.support.ports import free_port

pytestmark = pytest.mark.integration

CANARY = "canary-token-4be1d29c"
WORKERS = 16      # the figure: the machine (2 CPUs) runs it
RELOADS = 12
HELD_PER_GENERATION = 12


def conf(echo: EchoServer, dial_timeout_ms: int, extra: str = "") -> str:
    return (f"endpoints = {echo.addr}\nworkers = {WORKERS}\nhealth-check = none\n"
            f"dial-timeout = {dial_timeout_ms}ms\n{extra}")


def hold(addr: tuple[str, int], n: int, tag: str) -> list[socket.socket]:
    out = []
    for i in range(n):
        s = socket.create_connection(addr, timeout=10)
        assert roundtrip(s, f"{tag}-{i}".encode()) == f"{tag}-{i}".encode()
        out.append(s)
    return out


def _converged(gw) -> bool:
    """Every live worker was started after the last reload (and there are WORKERS)."""
    entries = gw.logs()
    cut = max(i for i, e in enumerate(entries) if e.get("msg") == "reloaded")
    fresh = {e["worker_pid"] for e in entries[cut:] if e.get("msg") == "started worker"}
    live = set(gw.worker_pids())
    return len(live) == WORKERS and live <= fresh


def test_rapid_reloads_with_held_connections_apply_whole_and_workers_converge(
        gateway_factory, tmp_path):
    with EchoServer() as echo:
        port = free_port()
        path = tmp_path / "gateway.conf"
        path.write_text(conf(echo, 1000))
        env = {"CANARY_SECRET": CANARY}
        gw = gateway_factory(["-c", str(path), f"--listen-addr=127.0.0.1:{port}"], env=env)
        addr = ("127.0.0.1", port)
        wait_until(lambda: len(gw.worker_pids()) == WORKERS, 20, "workers never came up")
        held = hold(addr, HELD_PER_GENERATION, "gen0")
        try:
            for n in range(1, RELOADS + 1):
                path.write_text(conf(echo, 1000 + 10 * n))
                gw.signal(signal.SIGHUP)
                held += hold(addr, HELD_PER_GENERATION, f"gen{n}")
                time.sleep(0.3)
            wait_until(lambda: gw.count_log("reloaded") == RELOADS, 60,
                       f"not every one of {RELOADS} reloads was logged")
            for i, s in enumerate(held):
                assert roundtrip(s, b"still %d" % i) == b"still %d" % i
        finally:
            for s in held:
                s.close()
        last = gw.find_logs("reloaded")[-1]
        assert last["changed"]["dial-timeout"][1] == f"{(1000 + 10 * RELOADS) / 1000:g}s"

        wait_until(lambda: _converged(gw), 60, "workers did not converge on the last configuration")
    assert not gw.find_logs("event handler failed")
    assert not gw.find_logs("reload failed; keeping the running configuration")
    assert CANARY not in gw.stderr_text() and CANARY not in gw.stdout_text()


def test_changing_only_the_retry_delay_keeps_the_workers(gateway_factory, tmp_path):
    with EchoServer() as echo:
        port = free_port()
        path = tmp_path / "gateway.conf"
        path.write_text(conf(echo, 1000, "retry-delay = 1m\n").replace(
            f"workers = {WORKERS}", "workers = 2"))
        gw = gateway_factory(["-c", str(path), f"--listen-addr=127.0.0.1:{port}"])
        wait_until(lambda: len(gw.worker_pids()) == 2, 10, "workers never came up")
        before = sorted(gw.worker_pids())
        path.write_text(path.read_text().replace("retry-delay = 1m", "retry-delay = 5s"))
        gw.signal(signal.SIGHUP)
        line = gw.wait_log("reloaded", 10)
        assert line["changed"] == {"retry-delay": ["1m0s", "5s"]}
        time.sleep(1)  # a replacement, had there been one, is forked at once
        assert sorted(gw.worker_pids()) == before
        assert not gw.find_logs("retiring worker")


def test_every_reloading_notification_is_followed_by_ready(gateway_factory, tmp_path):
    with EchoServer() as echo:
        sock_path = tmp_path / "notify.sock"
        listener = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        listener.bind(str(sock_path))
        listener.settimeout(10)
        port = free_port()
        path = tmp_path / "gateway.conf"
        path.write_text(conf(echo, 1000).replace(f"workers = {WORKERS}", "workers = 2"))
        gw = gateway_factory(["-c", str(path), f"--listen-addr=127.0.0.1:{port}"],
                             env={"NOTIFY_SOCKET": str(sock_path)})
        messages = []
        good, broken = conf(echo, 1500).replace(f"workers = {WORKERS}", "workers = 2"), \
            "endpoints = https://nope:1\n"
        for text in (good, broken, good, broken):
            path.write_text(text)
            gw.signal(signal.SIGHUP)
            wait_until(lambda: gw.count_log("reloaded")
                       + gw.count_log("reload failed; keeping the running configuration")
                       >= len(messages) // 2 + 1, 10, "reload not logged")
            messages.append(listener.recv(4096).decode())
            while not messages[-1].startswith("READY=1") or "MAINPID" in messages[-1]:
                messages.append(listener.recv(4096).decode())
        listener.close()
        kinds = [m.split("=", 1)[0] for m in messages if not m.startswith("READY=1\nMAINPID")]
        assert kinds == ["RELOADING", "READY"] * 4, messages
        assert os.path.exists(sock_path)


def test_running_out_of_worker_slots_makes_the_master_wait_then_converge(
        gateway_factory, tmp_path):
    # workers that cannot exit (stopped) keep their slots: 8 generations of 16 fill
    # all 128; the next reload must wait for slots, not fail
    with EchoServer() as echo:
        port = free_port()
        path = tmp_path / "gateway.conf"
        path.write_text(conf(echo, 1000))
        gw = gateway_factory(["-c", str(path), f"--listen-addr=127.0.0.1:{port}",
                              "--worker-timeout=0"])
        addr = ("127.0.0.1", port)
        stopped: list[int] = []
        try:
            for n in range(1, 10):
                wait_until(lambda held=tuple(stopped): len(set(gw.worker_pids()) - set(held))
                           >= WORKERS, 30, "serving workers never came up")
                serving = sorted(set(gw.worker_pids()) - set(stopped))
                for pid in serving:
                    os.kill(pid, signal.SIGSTOP)
                stopped += serving
                path.write_text(conf(echo, 1000 + 10 * n))
                gw.signal(signal.SIGHUP)
                wait_until(lambda n=n: gw.count_log("reloaded") == n, 20,
                           f"reload {n} not logged")
                if gw.find_logs("no free worker slot: waiting for a retiring worker to exit"):
                    break
            assert gw.find_logs("no free worker slot: waiting for a retiring worker to exit")
            assert gw.running()
        finally:
            for pid in stopped:
                try:
                    os.kill(pid, signal.SIGCONT)
                except ProcessLookupError:
                    pass

        wait_until(lambda: _converged(gw), 60, "workers did not converge after slots came free")
        with socket.create_connection(addr, timeout=10) as s:
            assert roundtrip(s, b"served") == b"served"
    assert not gw.find_logs("event handler failed")
