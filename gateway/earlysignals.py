"""The master's signals before its loop exists: start-up is never killed by a signal.

design: start-up (reading the config, resolving endpoints, SRV lookups and TLS checks
against a slow server, binding) can take seconds, and the default action of SIGHUP,
SIGUSR1, SIGTTIN or SIGTTOU is to kill the process: a logrotate `kill -USR1` during a
restart would kill the new gateway. `install()` is the first thing the master's
command line does; until the master's loop takes over (`handover()`):

- a stop signal (SIGTERM, SIGINT, SIGQUIT) raises `StartupInterrupted`, a
  BaseException (no `except Exception` in discovery swallows it), which also breaks
  a blocking DNS query or TLS handshake; the command line exits 0 with one log line;
- any other handled signal is only remembered, in order (a repeated SIGHUP or SIGUSR1
  once: acting on it twice would do the same thing twice), and `handover()` returns
  them for the master to act on once it runs.
"""
from __future__ import annotations

import signal

STOP = (signal.SIGTERM, signal.SIGINT, signal.SIGQUIT)
DEFERRED = (signal.SIGHUP, signal.SIGUSR1, signal.SIGTTIN, signal.SIGTTOU, signal.SIGCHLD)
HANDLED = STOP + DEFERRED  # every signal the master handles once running
_ONCE = (signal.SIGHUP, signal.SIGUSR1, signal.SIGCHLD)


class StartupInterrupted(BaseException):
    """A stop signal arrived before the gateway was running."""

    def __init__(self, signum: int):
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


class EarlySignals:
    def __init__(self) -> None:
        self.pending: list[int] = []
        self.active = False

    def install(self) -> "EarlySignals":
        for signum in HANDLED:
            signal.signal(signum, self._on_signal)
        self.active = True
        return self

    def _on_signal(self, signum: int, frame: object) -> None:
        if not self.active:
            return  # the loop's handlers replaced these; a late call is not ours
        if signum in STOP:
            raise StartupInterrupted(signum)
        if signum not in _ONCE or signum not in self.pending:
            self.pending.append(signum)

    def handover(self) -> list[int]:
        """Called once the master's own handlers are installed: the signals remembered
        during start-up, to act on now. Later calls of these handlers do nothing."""
        self.active = False
        pending, self.pending = self.pending, []
        return pending


def install() -> EarlySignals:
    return EarlySignals().install()
