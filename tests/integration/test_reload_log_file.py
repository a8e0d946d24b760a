"""A reload that changes the log file opens it while preparing: the real binary, a real
file-descriptor limit (prlimit on the running master)."""
from __future__ import annotations

import os
import signal
import subprocess

import pytest

from tests.support.echo import EchoServer
from tests.support.ports import free_port

pytestmark = pytest.mark.integration


def open_fds(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def test_a_reload_that_cannot_open_its_new_log_file_is_refused_whole(gateway_factory,
                                                                     tmp_path):
    """One file descriptor left: the reload's new listener and new log file cannot both
    be opened. It is refused whole (one line), the new listener closed, the log where
    it was; opening the log only when applying failed after the listeners were switched."""
    first, second = f"127.0.0.1:{free_port()}", f"127.0.0.1:{free_port()}"
    new_log = tmp_path / "new.log"
    conf = tmp_path / "gateway.conf"
    with EchoServer() as echo:
        conf.write_text(f"endpoints = {echo.addr}\nlisten-addr = {first}\n")
        gw = gateway_factory(["-c", str(conf), "--workers", "1", "--health-check", "none",
                              "--endpoints-refresh", "0"])
        conf.write_text(f"endpoints = {echo.addr}\nlisten-addr = {first},{second}\n"
                        f"log-file = {new_log}\n")
        spare = open_fds(gw.pid) + 1
        subprocess.run(["prlimit", "--pid", str(gw.pid), f"--nofile={spare}:"],
                       check=True, timeout=10)
        gw.signal(signal.SIGHUP)
        failed = gw.wait_log("reload failed; keeping the running configuration", 10)
        assert "Too many open files" in failed["error"]
        assert gw.running and gw.count_log("reloaded") == 0
        assert not new_log.exists() or "reloaded" not in new_log.read_text()
