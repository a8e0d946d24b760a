"""Run the real gateway binary (bin/etcd-gatewayd) as a child process in tests.

Design: the gateway is started exactly as a user would start it, as
``python bin/etcd-gatewayd ARGS`` with this interpreter, in a session of its own
(``start_new_session=True``) so that its process group holds the master and its
pre-forked workers and nothing else: ``stop()`` signals that group (SIGTERM, then
SIGKILL after a bound) and so never leaves a worker behind, and never touches
anything it did not start.  stderr (JSON log lines, one per line) and stdout go
to files in ``workdir``; the log file is parsed incrementally, so polling for a
message stays cheap even when the gateway logs a lot.  Every wait is bounded on
``time.monotonic()``.
"""
from __future__ import annotations

import itertools
import json
import logging
import os
import pathlib
import signal as _signal
import subprocess
import sys
import tempfile
import time
from typing import IO, Any, Callable, Mapping

import psutil

log = logging.getLogger(__name__)

REPO = pathlib.Path(__file__).resolve().parents[2]
BIN = REPO / "bin" / "etcd-gatewayd"
READY_MSG = "ready to proxy client requests"

_seq = itertools.count(1)
_POLL = 0.05


def gateway_command(args: list[str], prefix: list[str] | None = None) -> list[str]:
    """``[*prefix, python, bin/etcd-gatewayd, *args]``; ``prefix`` must exec its
    command (e.g. ``["prlimit", "--nofile=512:4096", "--"]``) so that the PID
    started is the gateway's master."""
    return [*(prefix or []), sys.executable, str(BIN), *args]


def _merged_env(env: Mapping[str, str] | None) -> dict[str, str]:
    merged = dict(os.environ)
    if env:
        merged.update(env)
    return merged


def run_gateway(
    args: list[str],
    timeout: float = 10,
    env: Mapping[str, str] | None = None,
    prefix: list[str] | None = None,
) -> subprocess.CompletedProcess[str]:
    """Run a short-lived gateway invocation (bad flags, --version...); output captured.

    Raises subprocess.TimeoutExpired (after killing it) past ``timeout``.
    """
    return subprocess.run(
        gateway_command(args, prefix),
        env=_merged_env(env),
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=REPO,
        start_new_session=True,
    )


class GatewayProcess:
    """One gateway process (master + workers) started from ``bin/etcd-gatewayd``.

    ``env`` entries are added to (override) this process's environment.
    ``workdir`` receives the stderr/stdout files; a temp dir is made when omitted.
    ``prefix`` is a command put before the interpreter (see gateway_command).
    """

    def __init__(
        self,
        args: list[str],
        env: Mapping[str, str] | None = None,
        workdir: pathlib.Path | None = None,
        prefix: list[str] | None = None,
    ) -> None:
        self.args = list(args)
        self.prefix = list(prefix or [])
        self.env = dict(env) if env else {}
        self.workdir = pathlib.Path(workdir) if workdir is not None else pathlib.Path(
            tempfile.mkdtemp(prefix="gateway-"))
        self.workdir.mkdir(parents=True, exist_ok=True)
        n = next(_seq)
        self.stderr_path = self.workdir / f"gateway-{os.getpid()}-{n}.stderr.log"
        self.stdout_path = self.workdir / f"gateway-{os.getpid()}-{n}.stdout.log"
        self.proc: subprocess.Popen[bytes] | None = None
        self._files: list[IO[bytes]] = []
        self._entries: list[dict[str, Any]] = []
        self._offset = 0
        self._partial = b""
        self._stopped = False

    # ----------------------------------------------------------------- lifecycle
    def start(self, wait_for: str | None = READY_MSG, timeout: float = 15) -> "GatewayProcess":
        """Start the gateway; if ``wait_for`` is set, wait for a log line with that msg.

        Raises RuntimeError (with its stderr) if the process exits first, and
        TimeoutError (after stopping it) if the message does not come in time.
        """
        if self.proc is not None:
            raise RuntimeError("gateway already started")
        err = open(self.stderr_path, "wb")
        out = open(self.stdout_path, "wb")
        self._files = [err, out]
        self.proc = subprocess.Popen(
            gateway_command(self.args, self.prefix),
            env=_merged_env(self.env),
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=err,
            cwd=REPO,
            start_new_session=True,
        )
        log.info("started gateway pid %d: %s", self.proc.pid, " ".join(self.args))
        if wait_for is not None:
            try:
                self.wait_log(wait_for, timeout)
            except BaseException:
                self.stop()
                raise
        return self

    def stop(self, timeout: float = 10) -> int | None:
        """SIGTERM the process group, wait; SIGKILL the group after ``timeout``. Idempotent.

        Returns the master's exit code (None if it was never started).
        """
        if self.proc is None or self._stopped:
            return self.returncode
        self._stopped = True
        pgid = self.proc.pid  # == pid: start_new_session made it a group leader
        if self.proc.poll() is not None and not self._group_alive(pgid):
            # Already gone, workers too: send nothing (the pid may be reused).
            for f in self._files:
                f.close()
            self._files = []
            return self.returncode
        self._killpg(pgid, _signal.SIGTERM)
        deadline = time.monotonic() + timeout
        try:
            self.proc.wait(timeout=max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            log.warning("gateway pid %d ignored SIGTERM for %.1fs: SIGKILL", pgid, timeout)
        # Workers may outlive the master briefly: wait for the group to empty.
        while self._group_alive(pgid) and time.monotonic() < deadline:
            time.sleep(_POLL)
        if self.proc.poll() is None or self._group_alive(pgid):
            self._killpg(pgid, _signal.SIGKILL)
            self.proc.wait(timeout=10)
            end = time.monotonic() + 5
            while self._group_alive(pgid) and time.monotonic() < end:
                time.sleep(_POLL)
        for f in self._files:
            f.close()
        self._files = []
        return self.returncode

    @staticmethod
    def _killpg(pgid: int, sig: int) -> None:
        try:
            os.killpg(pgid, sig)
        except (ProcessLookupError, PermissionError):
            pass

    @staticmethod
    def _group_alive(pgid: int) -> bool:
        """True while a non-zombie process is left in the group."""
        for p in psutil.process_iter(["pid"]):
            try:
                if os.getpgid(p.pid) == pgid and p.status() != psutil.STATUS_ZOMBIE:
                    return True
            except (ProcessLookupError, psutil.Error, OSError):
                continue
        return False

    def __enter__(self) -> "GatewayProcess":
        if self.proc is None:
            self.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.stop()

    # ---------------------------------------------------------------- process
    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc is not None else None

    @property
    def returncode(self) -> int | None:
        return self.proc.poll() if self.proc is not None else None

    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def worker_pids(self) -> list[int]:
        """PIDs of the master's direct children (its workers); [] if it is gone."""
        if self.proc is None:
            return []
        try:
            return [c.pid for c in psutil.Process(self.proc.pid).children(recursive=False)]
        except psutil.NoSuchProcess:
            return []

    def signal(self, sig: int) -> None:
        """Send ``sig`` to the master only."""
        if self.proc is None:
            raise RuntimeError("gateway not started")
        os.kill(self.proc.pid, sig)

    def wait(self, timeout: float) -> int:
        """Wait for the master to exit; raises subprocess.TimeoutExpired past ``timeout``."""
        if self.proc is None:
            raise RuntimeError("gateway not started")
        return self.proc.wait(timeout=timeout)

    # ------------------------------------------------------------------- logs
    def stderr_text(self) -> str:
        try:
            return self.stderr_path.read_text("utf-8", "replace")
        except OSError:
            return ""

    def stdout_text(self) -> str:
        try:
            return self.stdout_path.read_text("utf-8", "replace")
        except OSError:
            return ""

    def logs(self) -> list[dict[str, Any]]:
        """Every JSON object line of stderr so far (non-JSON lines skipped)."""
        try:
            with open(self.stderr_path, "rb") as f:
                f.seek(self._offset)
                chunk = f.read()
        except FileNotFoundError:
            return list(self._entries)
        self._offset += len(chunk)
        data = self._partial + chunk
        lines = data.split(b"\n")
        self._partial = lines.pop()  # incomplete last line (b"" if data ended in \n)
        if self._partial and self.proc is not None and self.proc.poll() is not None:
            lines.append(self._partial)  # the process is gone: nothing more will come
            self._partial = b""
        for line in lines:
            line = line.strip()
            if not line.startswith(b"{"):
                continue
            try:
                obj = json.loads(line)
            except ValueError:
                continue
            if isinstance(obj, dict):
                self._entries.append(obj)
        return list(self._entries)

    def find_logs(
        self, msg: str, predicate: Callable[[dict[str, Any]], bool] | None = None
    ) -> list[dict[str, Any]]:
        return [
            e for e in self.logs()
            if e.get("msg") == msg and (predicate is None or predicate(e))
        ]

    def count_log(self, msg: str) -> int:
        """Number of log lines so far whose ``msg`` is exactly ``msg``."""
        return len(self.find_logs(msg))

    def wait_log(
        self,
        msg: str,
        timeout: float = 10,
        predicate: Callable[[dict[str, Any]], bool] | None = None,
    ) -> dict[str, Any]:
        """Wait for the first log line with ``msg`` (and ``predicate``, if given).

        Raises TimeoutError after ``timeout`` s, or RuntimeError at once if the
        process has exited without logging it; both carry the stderr tail.
        """
        deadline = time.monotonic() + timeout
        while True:
            exited = self.proc is not None and self.proc.poll() is not None
            found = self.find_logs(msg, predicate)
            if found:
                return found[0]
            if exited:
                raise RuntimeError(
                    f"gateway exited with {self.proc.returncode} before logging {msg!r}; "  # type: ignore[union-attr]
                    f"stderr:\n{self._tail()}"
                )
            if time.monotonic() >= deadline:
                raise TimeoutError(
                    f"no gateway log {msg!r} within {timeout:.1f}s; stderr:\n{self._tail()}"
                )
            time.sleep(_POLL)

    def _tail(self, chars: int = 4000) -> str:
        return self.stderr_text()[-chars:]


def stop_process_group(proc: subprocess.Popen, timeout: float = 10) -> None:
    """Stop a gateway a test started itself with start_new_session (socket activation,
    a launcher run): SIGTERM its process group, then SIGKILL after ``timeout``."""
    try:
        os.killpg(proc.pid, _signal.SIGTERM)
    except ProcessLookupError:
        return
    try:
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        try:
            os.killpg(proc.pid, _signal.SIGKILL)
        except ProcessLookupError:
            pass
        proc.wait(5)
