"""bin/etcd-gatewayd straight from a checkout, started by the system python3.

A checkout here is a copy of the repository's bin/, gateway/ and conf/ (what the
launcher uses), with `.venv` a link to the venv the suite runs in, or no `.venv` at
all. The system interpreter is the `python3` found on PATH once the venv's own
directories are taken off it; `-S` (no site-packages) makes sure it lacks the runtime
packages whatever the machine has installed, so the re-exec path is what runs.
"""
import os
import pathlib
import shutil
import socket
import subprocess
import sys

import pytest

from tests.support.clients import roundtrip, wait_until
from tests.support.echo import EchoServer
from tests.support.gateway_proc import REPO, stop_process_group

pytestmark = pytest.mark.integration

VENV = pathlib.Path(sys.prefix)


def path_without_venv() -> str:
    return os.pathsep.join(d for d in os.environ.get("PATH", "").split(os.pathsep)
                           if d and not pathlib.Path(d).resolve().is_relative_to(VENV.resolve()))


def system_python() -> str:
    found = shutil.which("python3", path=path_without_venv())
    assert found, "no python3 on PATH outside the venv"
    return found


def system_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("VIRTUAL_ENV", "PYTHONPATH")}
    env["PATH"] = path_without_venv()
    env.update(extra)
    return env


def make_checkout(root: pathlib.Path, venv: pathlib.Path | None) -> pathlib.Path:
    checkout = root / "checkout"
    ignore = shutil.ignore_patterns("__pycache__")
    for part in ("bin", "gateway", "conf"):
        shutil.copytree(REPO / part, checkout / part, ignore=ignore)
    if venv is not None:
        (checkout / ".venv").symlink_to(venv, target_is_directory=True)
    return checkout


def check_config(checkout, *command_prefix, env=None, extra=()):
    return subprocess.run(
        [*command_prefix, str(checkout / "bin" / "etcd-gatewayd"), "-c", "conf/gateway.conf",
         "--check-config", *extra],
        cwd=checkout, env=env or system_env(), capture_output=True, text=True, timeout=30,
        stdin=subprocess.DEVNULL)


def test_check_config_from_a_checkout_runs_with_the_python3_on_path(tmp_path):
    checkout = make_checkout(tmp_path, VENV)
    result = check_config(checkout)  # the shebang: env python3, the venv off PATH
    assert result.returncode == 0, result.stderr
    assert "listen-addr" in result.stdout


def test_an_interpreter_without_the_packages_reexecs_keeping_argv_and_environment(tmp_path):
    checkout = make_checkout(tmp_path, VENV)
    result = check_config(checkout, system_python(), "-S",
                          env=system_env(ETCD_GATEWAY_DIAL_TIMEOUT="3s"),
                          extra=["--retry-delay=7s"])
    assert result.returncode == 0, result.stderr
    rows = {line.split()[0]: line for line in result.stdout.splitlines() if line.strip()}
    assert rows["retry-delay"].split()[1:] == ["7s", "flag"]
    assert "environment (ETCD_GATEWAY_DIAL_TIMEOUT)" in rows["dial-timeout"]


def test_without_a_venv_one_line_names_the_package_and_the_install_command(tmp_path):
    checkout = make_checkout(tmp_path, None)
    result = check_config(checkout, system_python(), "-S")
    assert result.returncode == 1
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert "Traceback" not in result.stderr
    assert "dnspython" in lines[0]
    assert "scripts/test" in lines[0] and f"pip install {checkout}" in lines[0]


def test_a_venv_without_the_packages_gives_the_one_line_error_not_a_loop(tmp_path):
    empty = tmp_path / "empty-venv"
    subprocess.run([system_python(), "-m", "venv", "--without-pip", str(empty)],
                   check=True, timeout=60, env=system_env(), capture_output=True)
    checkout = make_checkout(tmp_path, empty)
    result = check_config(checkout, system_python(), "-S")
    assert result.returncode == 1
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert str(checkout / ".venv" / "bin" / "python") in lines[0]
    assert "dnspython" in lines[0]


def test_socket_activation_through_the_launcher_adopts_fd_3(tmp_path):
    checkout = make_checkout(tmp_path, VENV)
    server = socket.create_server(("127.0.0.1", 0))
    port = server.getsockname()[1]
    fd = server.fileno()
    log = tmp_path / "stderr.log"
    # as systemd does: the socket on fd 3, LISTEN_PID naming the process that execs
    activate = ("import os, sys; os.dup2(int(sys.argv[1]), 3); "
                "os.environ.update(LISTEN_PID=str(os.getpid()), LISTEN_FDS='1'); "
                "os.execv(sys.argv[2], sys.argv[2:])")
    with EchoServer() as echo, open(log, "wb") as err:
        proc = subprocess.Popen(
            [sys.executable, "-c", activate, str(fd), system_python(), "-S",
             str(checkout / "bin" / "etcd-gatewayd"), f"--endpoints={echo.addr}",
             "--listen-addr=127.0.0.1:1", "--workers=1"],
            pass_fds=(fd,), stderr=err, stdin=subprocess.DEVNULL, cwd=checkout,
            env=system_env(), start_new_session=True)
        server.close()
        try:
            wait_until(lambda: b"ready to proxy" in log.read_bytes(), 20,
                       "the gateway did not start")
            assert b"adopted listener from systemd" in log.read_bytes()
            with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
                assert roundtrip(s, b"activated") == b"activated"
        finally:
            stop_process_group(proc)
