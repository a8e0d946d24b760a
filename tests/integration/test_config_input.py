"""The config file read once and strictly, through the real binary: pipes, FIFOs,
devices, encodings, repeated keys, control characters, two -c flags, and
--check-config agreeing with start."""
import os
import signal
import subprocess
import threading

import pytest

from tests.support.clients import echo_once
from tests.support.echo import EchoServer
from tests.support.gateway_proc import REPO, gateway_command, run_gateway
from tests.support.ports import free_port

pytestmark = pytest.mark.integration


def check_config_through_pipe(text: bytes, *extra: str) -> subprocess.CompletedProcess:
    """`--check-config -c /dev/fd/N`, N the read end of a pipe holding `text`."""
    r, w = os.pipe()
    try:
        os.write(w, text)
        os.close(w)
        return subprocess.run(gateway_command(["--check-config", "-c", f"/dev/fd/{r}",
                                               *extra]),
                              pass_fds=(r,), capture_output=True, text=True, timeout=20,
                              cwd=REPO, stdin=subprocess.DEVNULL)
    finally:
        os.close(r)


def rows(stdout: str) -> dict[str, list[str]]:
    return {line.split()[0]: line.split()[1:] for line in stdout.splitlines() if line.strip()}


def refused(args, *words, env=None, status=2) -> str:
    result = run_gateway(args, env=env, timeout=20)
    assert result.returncode == status, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in result.stderr, result.stderr
    for word in words:
        assert word in lines[0], lines[0]
    return lines[0]


def test_a_config_file_read_from_a_pipe_is_the_one_used():
    port = free_port()
    result = check_config_through_pipe(
        f"endpoints = 127.0.0.1:21001\nlisten-addr = 127.0.0.1:{port}\n".encode())
    assert result.returncode == 0, result.stderr
    table = rows(result.stdout)
    assert table["endpoints"][0] == "127.0.0.1:21001"
    assert table["listen-addr"][0] == f"127.0.0.1:{port}"
    assert "line 2" in " ".join(table["listen-addr"])


def test_a_gateway_started_from_a_fifo_relays_where_the_fifo_said_and_reloads_it(
        gateway_factory, tmp_path):
    fifo = tmp_path / "gateway.fifo"
    os.mkfifo(fifo)
    port = free_port()
    with EchoServer() as echo:
        text = f"endpoints = {echo.addr}\nlisten-addr = 127.0.0.1:{port}\n"
        writer = threading.Thread(target=fifo.write_text, args=(text,))
        writer.start()
        gw = gateway_factory(["-c", str(fifo), "--health-check=none"])
        writer.join(10)
        assert echo_once(("127.0.0.1", port), b"via fifo") == b"via fifo"
        # a pipe cannot be read twice: a reload reuses what was read at start
        gw.signal(signal.SIGHUP)
        entry = gw.wait_log("reloaded", 15)
        assert entry["changed"] == {}
        assert echo_once(("127.0.0.1", port), b"after reload") == b"after reload"


def test_a_fifo_with_no_writer_is_refused_within_a_bound(tmp_path):
    fifo = tmp_path / "nobody.fifo"
    os.mkfifo(fifo)
    refused(["--check-config", "-c", str(fifo)], "--config", str(fifo), "end of file")


@pytest.mark.parametrize("path, kind", [("/dev/zero", "a device"), ("/dev/null", "a device"),
                                        ("/", "a directory")])
def test_a_device_or_directory_is_refused_at_once(path, kind):
    refused(["--check-config", "-c", path], "--config", repr(path), kind)


def test_a_config_file_over_one_mebibyte_is_refused(tmp_path):
    path = tmp_path / "big.conf"
    path.write_bytes(b"#" * ((1 << 20) + 1))
    refused(["--check-config", "-c", str(path)], str(path), "1 MiB")


def test_a_utf8_bom_is_accepted(tmp_path):
    path = tmp_path / "bom.conf"
    path.write_bytes(b"\xef\xbb\xbfendpoints = 127.0.0.1:21002\n")
    result = run_gateway(["--check-config", "-c", str(path)])
    assert result.returncode == 0, result.stderr
    assert rows(result.stdout)["endpoints"][0] == "127.0.0.1:21002"


def test_a_non_utf8_file_is_refused_naming_the_line(tmp_path):
    path = tmp_path / "latin1.conf"
    path.write_bytes(b"endpoints = 127.0.0.1:21003\nlog-file = /tmp/caf\xe9.log\n")
    refused(["--check-config", "-c", str(path)], str(path), "line 2", "UTF-8")


def test_repeated_endpoints_lines_accumulate(tmp_path):
    path = tmp_path / "many.conf"
    path.write_text("endpoints = 127.0.0.1:21011\nendpoints = 127.0.0.1:21012\n"
                    "endpoints = 127.0.0.1:21013,127.0.0.1:21014\n")
    result = run_gateway(["--check-config", "-c", str(path)])
    assert result.returncode == 0, result.stderr
    table = rows(result.stdout)
    assert table["endpoints"][0] == ("127.0.0.1:21011,127.0.0.1:21012,127.0.0.1:21013,"
                                     "127.0.0.1:21014")
    assert "lines 1, 2, 3" in " ".join(table["endpoints"])


def test_any_other_repeated_key_is_refused_naming_both_lines(tmp_path):
    path = tmp_path / "twice.conf"
    path.write_text("retry-delay = 5s\nendpoints = 127.0.0.1:21015\nretry-delay = 6s\n")
    refused(["--check-config", "-c", str(path)], str(path), "line 3", "line 1",
            "retry-delay")


@pytest.mark.parametrize("line", [b"log-file = /tmp/a\0b.log\n",
                                  b"listen-addr = 127.0.0.1\x0023790\n",
                                  b"log-file = /tmp/a\x1bb.log\n"])
def test_nul_and_control_characters_in_a_file_value_are_refused(tmp_path, line):
    path = tmp_path / "ctl.conf"
    path.write_bytes(b"endpoints = 127.0.0.1:21016\n" + line)
    refused(["--check-config", "-c", str(path)], str(path), "line 2")


def test_control_characters_in_a_flag_or_environment_value_are_refused():
    refused(["--check-config", "--log-file=/tmp/a\x01b"], "--log-file", "U+0001")
    refused(["--check-config"], "--log-file", "U+001B", "ETCD_GATEWAY_LOG_FILE",
            env={"ETCD_GATEWAY_LOG_FILE": "/tmp/a\x1bb"})


def test_two_config_flags_are_refused_naming_both(tmp_path):
    first, second = tmp_path / "a.conf", tmp_path / "b.conf"
    first.write_text("endpoints = 127.0.0.1:21017\n")
    second.write_bytes(b"endpoints = \xff\n")
    for args in (["-c", str(first), "-c", str(second)],
                 ["--check-config", "-c", str(first), f"--config={second}"]):
        refused(args, "--config", str(first), str(second))


def test_whitespace_separated_endpoints_in_the_environment_are_accepted():
    result = run_gateway(["--check-config"],
                         env={"ETCD_GATEWAY_ENDPOINTS": "127.0.0.1:21018 127.0.0.1:21019"})
    assert result.returncode == 0, result.stderr
    assert rows(result.stdout)["endpoints"][0] == "127.0.0.1:21018,127.0.0.1:21019"


def test_check_config_refuses_a_log_file_start_could_not_open(tmp_path):
    log_file = tmp_path / "no-such-dir" / "gw.log"
    args = ["--endpoints=127.0.0.1:21020", f"--listen-addr=127.0.0.1:{free_port()}",
            f"--log-file={log_file}"]
    checked = refused(["--check-config", *args], "--log-file", str(log_file))
    started = refused(args, "--log-file", str(log_file))
    assert checked == started


def test_check_config_exits_like_start_for_an_unresolvable_endpoint():
    args = ["--endpoints=no-such-host.invalid:2379", f"--listen-addr=127.0.0.1:{free_port()}"]
    assert (refused(["--check-config", *args], "no-such-host.invalid")
            == refused(args, "no-such-host.invalid"))


def test_check_config_exits_like_start_for_a_listen_address_that_does_not_resolve():
    args = ["--endpoints=127.0.0.1:21021", "--listen-addr=no-such-host.invalid:23790"]
    assert (refused(["--check-config", *args], "--listen-addr", "no-such-host.invalid",
                    status=1)
            == refused(args, "--listen-addr", "no-such-host.invalid", status=1))
