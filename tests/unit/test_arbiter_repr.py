"""The master never shows its configuration, command line or environment in a log line:
its repr() names only safe things, and a failing handler is named by qualified name."""
import functools

from gateway import config
from gateway.arbiter import Arbiter
from tests.support.logs import captured_log

CANARY = "canary-5ecret-9d1e"


def _arbiter() -> Arbiter:
    argv = ["--endpoints=127.0.0.1:2379", f"--log-file=/tmp/{CANARY}-not-opened"]
    environ = {"CANARY_TOKEN": CANARY, "ETCD_GATEWAY_RETRY_DELAY": "5s"}
    return Arbiter(config.load(argv, environ), argv, environ)


def test_master_repr_names_no_config_argv_or_environment():
    arbiter = _arbiter()
    try:
        text = repr(arbiter)
        assert CANARY not in text and "CANARY_TOKEN" not in text
        assert text.startswith("<Arbiter pid=")
    finally:
        arbiter.loop.close()


def test_a_failing_master_handler_is_logged_without_the_environment():
    arbiter = _arbiter()
    try:
        with captured_log() as stream:
            # a real handler of the master, called as the loop calls it, that raises
            # (no worker record): its partial's repr() would hold the whole master
            arbiter.loop.call_later(0, functools.partial(arbiter._worker_exited, None, 0))
            arbiter.loop.run_once(0.1)
    finally:
        arbiter.loop.close()
    lines = [line for line in stream.getvalue().splitlines() if "event handler failed" in line]
    assert len(lines) == 1
    assert '"handler": "gateway.arbiter.Arbiter._worker_exited"' in lines[0]
    assert CANARY not in stream.getvalue()
