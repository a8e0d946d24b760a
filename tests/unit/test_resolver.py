"""Lookups in a child process: the answer comes back through the master's loop."""
import os
import time

from gateway import config, resolver
from gateway import log as gwlog
from gateway.health import HealthTable
from gateway.loop import Loop

TOO_LONG = "x" * 64 + ".test"   # a DNS label over 63 bytes: fails without a query


def load(*argv):
    return config.load(list(argv), {})


def run_until(loop: Loop, done, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not done():
        assert time.monotonic() < deadline, "no answer from the lookup child"
        loop.run_once(0.1)


def test_a_lookup_child_answers_through_the_loop_and_exits():
    loop, got = Loop(), []
    c = load("--endpoints", f"{TOO_LONG}:2379,127.0.0.9:2379")
    child = resolver.LookupChild(loop, c, {}, got.append, ())
    child.start()
    run_until(loop, lambda: got)
    status = os.waitpid(child.pid, 0)[1]
    assert status == 0, (status, got)
    assert [e.address for e in got[0].endpoints] == ["127.0.0.9:2379"]
    assert got[0].unresolved == [f"{TOO_LONG}:2379"]
    assert not child.running


def test_a_cancelled_lookup_is_killed_and_never_answers():
    loop, got = Loop(), []
    child = resolver.LookupChild(loop, load("--endpoints", "localhost:2379"), {},
                                 got.append, ())
    child.start()
    child.cancel()
    os.waitpid(child.pid, 0)
    loop.run_once(0.1)
    assert got == [] and not child.running


def test_only_ip_literals_start_no_lookup():
    loop, answers = Loop(), []
    r = resolver.Resolver(loop, HealthTable(max_workers=2),
                          load("--endpoints", "127.0.0.1:2379"),
                          lambda c, a: answers.append(a), ())
    r.lookup_now()
    assert not r.running
    r.close()


def test_a_lookup_child_works_while_the_log_goes_to_a_file(tmp_path):
    path = tmp_path / "gateway.log"
    gwlog.setup(gwlog.Settings("info", "json", str(path)))
    try:
        loop, got = Loop(), []
        child = resolver.LookupChild(loop, load("--endpoints", f"{TOO_LONG}:2379"), {},
                                     got.append, ())
        child.start()
        run_until(loop, lambda: got)
        assert os.waitpid(child.pid, 0)[1] == 0
        assert got[0].unresolved == [f"{TOO_LONG}:2379"]
    finally:
        gwlog.setup(gwlog.Settings("info", "json", ""))


def test_ip_literals_only_leave_the_watch_for_failed_named_members_off():
    loop = Loop()
    r = resolver.Resolver(loop, HealthTable(max_workers=2),
                          load("--endpoints", "127.0.0.1:2379"), lambda c, a: None, ())
    r.start()
    assert not r.watching  # nothing to watch: an idle master does not wake for it
    r.close()
    loop.close()


def test_a_reload_that_names_members_starts_the_watch_and_one_that_drops_them_stops_it():
    loop = Loop()
    r = resolver.Resolver(loop, HealthTable(max_workers=2),
                          load("--endpoints", "127.0.0.1:2379"), lambda c, a: None, ())
    r.start()
    r.configure(load("--endpoints", "localhost:2379"))
    assert r.watching
    r.configure(load("--endpoints", "127.0.0.1:2379"))
    deadline = time.monotonic() + 5
    while r.watching:  # its next run finds nothing named and does not come again
        assert time.monotonic() < deadline, "the watch still runs"
        loop.run_once(resolver.WATCH)
    r.close()
    loop.close()
