"""The master's signal handling: one small handler per signal, and children it did not
start are reaped and logged (not taken for a lookup child)."""
import os
import signal

import pytest

from gateway import config
from gateway.arbiter import _SIGNAL_HANDLERS, HANDLED, Arbiter, State
from tests.support.logs import captured_log


def _arbiter() -> Arbiter:
    argv = ["--endpoints=127.0.0.1:2379"]
    return Arbiter(config.load(argv, {}), argv, {})


def test_every_handled_signal_has_a_handler():
    assert set(_SIGNAL_HANDLERS) == set(HANDLED)


def test_worker_count_signals_while_draining_change_nothing():
    arbiter = _arbiter()
    try:
        arbiter.state = State.DRAINING
        before = arbiter.desired_workers
        arbiter._on_signal(signal.SIGTTIN)
        arbiter._on_signal(signal.SIGTTOU)
        assert arbiter.desired_workers == before
    finally:
        arbiter.loop.close()


def test_an_unknown_child_is_reaped_and_logged():
    arbiter = _arbiter()
    pid = os.fork()
    if pid == 0:
        os._exit(3)
    try:
        os.waitid(os.P_PID, pid, os.WEXITED | os.WNOWAIT)  # exited, not yet reaped
        with captured_log() as stream:
            arbiter._on_signal(signal.SIGCHLD)
    finally:
        arbiter.loop.close()
    lines = [line for line in stream.getvalue().splitlines() if "unknown child" in line]
    assert len(lines) == 1
    assert f'"pid": {pid}' in lines[0] and "exit status 3" in lines[0]
    with pytest.raises(ChildProcessError):  # reaped: nothing left to wait for
        os.waitpid(pid, os.WNOHANG)
