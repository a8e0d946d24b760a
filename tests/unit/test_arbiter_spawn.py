"""The master's spawning when it cannot start a worker: every worker slot taken, or
fork failing. The service already up keeps serving and the start is retried; a
master that has no worker yet gives up with one line."""
import dataclasses
import errno
import os
import subprocess
import time

import pytest

from gateway import config
from gateway.arbiter import Arbiter, FatalError, WorkerRecord
from gateway.health import NoWorkerSlot


@pytest.fixture
def arbiter():
    argv = ["--endpoints=127.0.0.1:2379"]
    master = Arbiter(config.load(argv, {}), argv, {})
    yield master
    master.loop.close()


@pytest.fixture
def serving_child():
    """A real child process standing in for a serving worker (only its pid is used)."""
    child = subprocess.Popen(["sleep", "60"])
    yield child.pid
    child.kill()
    child.wait()


def _serving(arbiter: Arbiter, pid: int, stale: bool) -> WorkerRecord:
    settings = arbiter._worker_settings()
    if stale:  # forked with older settings: to be replaced
        settings = dataclasses.replace(settings, dial_timeout=99.0)
    index = arbiter.table.claim_worker_slot(pid)
    record = WorkerRecord(pid, index, time.monotonic(), settings, arbiter._listener_gen)
    arbiter.workers[pid] = record
    return record


def _no_fork():
    raise OSError(errno.EAGAIN, os.strerror(errno.EAGAIN))


def test_with_every_worker_slot_taken_the_old_worker_keeps_serving_and_a_retry_is_due(
        arbiter, serving_child):
    stale = _serving(arbiter, serving_child, stale=True)
    while True:  # every other slot held (by retiring workers, say)
        try:
            arbiter.table.claim_worker_slot(1)
        except NoWorkerSlot:
            break
    arbiter.manage_workers()
    assert list(arbiter.workers) == [serving_child]
    assert not stale.retiring          # not retired before its replacement exists
    assert arbiter._fork_retry is not None


def test_a_failed_fork_while_serving_is_retried_and_frees_its_slot(
        arbiter, serving_child, monkeypatch):
    _serving(arbiter, serving_child, stale=True)
    monkeypatch.setattr(os, "fork", _no_fork)
    assert arbiter._spawn() is False
    assert arbiter._fork_retry is not None
    assert arbiter.table.claim_worker_slot(2) == 1  # the slot it took is free again


def test_a_failed_fork_with_no_worker_yet_is_fatal(arbiter, monkeypatch):
    monkeypatch.setattr(os, "fork", _no_fork)
    with pytest.raises(FatalError, match="cannot fork a worker: Resource temporarily"):
        arbiter._spawn()
    assert arbiter.table.claim_worker_slot(2) == 0
