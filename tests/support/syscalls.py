"""The system calls a process makes, seen with strace (attached to it by PID).

design: `traced(pid, calls, out)` attaches `strace -e trace=CALLS -o OUT -p PID`, waits
for strace to say it attached (bounded), and on exit detaches it (SIGINT to strace, by
its PID) and waits for it; `lines(out, word)` are the traced calls naming `word`.
"""
from __future__ import annotations

import contextlib
import pathlib
import select
import signal
import subprocess
from collections.abc import Iterator

ATTACH_BOUND = 10.0


@contextlib.contextmanager
def traced(pid: int, calls: str, out: pathlib.Path) -> Iterator[None]:
    tracer = subprocess.Popen(["strace", "-e", f"trace={calls}", "-o", str(out),
                               "-p", str(pid)], stdin=subprocess.DEVNULL,
                              stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        assert tracer.stderr is not None
        first = _first_line(tracer)
        assert "attached" in first, f"strace did not attach to {pid}: {first!r}"
        yield
    finally:
        tracer.send_signal(signal.SIGINT)  # detaches from the traced process
        try:
            tracer.wait(ATTACH_BOUND)
        except subprocess.TimeoutExpired:
            tracer.kill()
            tracer.wait(ATTACH_BOUND)


def _first_line(tracer: subprocess.Popen) -> str:
    assert tracer.stderr is not None
    ready, _, _ = select.select([tracer.stderr], [], [], ATTACH_BOUND)
    return tracer.stderr.readline() if ready else ""


def lines(out: pathlib.Path, word: str) -> list[str]:
    return [line for line in out.read_text().splitlines() if word in line]
