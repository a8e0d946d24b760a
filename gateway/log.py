"""etcd-style log lines: JSON (`level`, `ts`, `caller`, `msg`, then fields) or console.

design: operators grep the original's `msg` texts, so messages are fixed strings and
everything variable goes into fields (`log.info("activated", extra=fields(address=a))`).
`setup()` can run again (after fork, on SIGUSR1 to reopen the file, on reload); what
it sets up is one value, `Settings` (level, format, file), built from the
configuration in one place (`Config.log_settings`).
"""
from __future__ import annotations

import functools
import json
import logging
import os
import sys
import time
from dataclasses import dataclass
from typing import Any

LOGGER_NAME = "etcd-gatewayd"
_LEVELS = {"debug": logging.DEBUG, "info": logging.INFO, "warn": logging.WARNING,
           "error": logging.ERROR}
_NAMES = {logging.DEBUG: "debug", logging.INFO: "info", logging.WARNING: "warn",
          logging.ERROR: "error", logging.CRITICAL: "fatal"}


@dataclass(frozen=True)
class Settings:
    """Where and how the gateway logs: --log-level, --log-format, --log-file ("":
    stderr)."""
    level: str = "info"
    fmt: str = "json"
    path: str = ""

    @property
    def debug(self) -> bool:
        return self.level == "debug"

    @property
    def destination(self) -> str:
        """The file, or "stderr" (for a log line about it)."""
        return self.path or "stderr"


def fields(**values: Any) -> dict[str, Any]:
    """`extra=` for a log call: structured fields after `msg`."""
    return {"fields": values}


class Throttle:
    """At most one line per `period` for a repeated event; `allow()` returns how many
    were suppressed since the last line (to log with it), or None to stay quiet."""
    __slots__ = ("period", "last", "suppressed")

    def __init__(self, period: float = 1.0):
        self.period = period
        self.last = float("-inf")
        self.suppressed = 0

    def allow(self) -> int | None:
        now = time.monotonic()
        if now - self.last < self.period:
            self.suppressed += 1
            return None
        self.last = now
        suppressed, self.suppressed = self.suppressed, 0
        return suppressed


def handler_name(callback: object) -> str:
    """A failing callback named for a log line by its qualified name only
    (`Arbiter._on_signal`, `Checker._ready`), never by repr(): a bound method's repr
    holds its object's, and the master's holds the configuration and environment."""
    while isinstance(callback, functools.partial):
        callback = callback.func
    func = getattr(callback, "__func__", callback)  # a bound method's function
    name = getattr(func, "__qualname__", None)
    if isinstance(name, str):
        module = getattr(func, "__module__", None)
        return f"{module}.{name}" if isinstance(module, str) else name
    return f"{type(callback).__module__}.{type(callback).__qualname__}"


def get(name: str = "") -> logging.Logger:
    return logging.getLogger(f"{LOGGER_NAME}.{name}" if name else LOGGER_NAME)


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, Any] = {
            "level": _NAMES.get(record.levelno, "info"),
            "ts": round(record.created, 6),
            "caller": f"{record.module}/{os.path.basename(record.pathname)}:{record.lineno}",
            "msg": record.getMessage(),
        }
        out["pid"] = record.process
        for key, value in getattr(record, "fields", {}).items():
            out[key] = value
        if record.exc_info:
            out["error"] = self.formatException(record.exc_info)
        return json.dumps(out, default=str, ensure_ascii=False)


class ConsoleFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        stamp = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(record.created))
        extra = " ".join(f"{k}={json.dumps(v, default=str)}"
                         for k, v in getattr(record, "fields", {}).items())
        line = (f"{stamp}.{int(record.msecs):03d} {_NAMES.get(record.levelno, 'info'):5} "
                f"[{record.process}] {record.getMessage()}" + (f"  {extra}" if extra else ""))
        if record.exc_info:
            line += "\n" + self.formatException(record.exc_info)
        return line


def setup(settings: Settings) -> None:
    """(Re)configure the gateway's logger; opens the file for append, or uses stderr.
    The new file is opened before the old handler goes: if it cannot be opened
    (OSError), logging carries on exactly as before."""
    install(open_handler(settings), settings)


def open_handler(settings: Settings) -> logging.Handler:
    """The handler `settings` name, its file opened (the part that can fail: OSError),
    for `install` later (a reload opens it while preparing, installs it when applying)."""
    if settings.path:
        handler: logging.Handler = logging.FileHandler(settings.path, mode="a",
                                                       encoding="utf-8")
    else:
        handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter() if settings.fmt == "json" else ConsoleFormatter())
    return handler


def install(handler: logging.Handler, settings: Settings) -> None:
    """Log through `handler` (from `open_handler`) from now on; cannot fail."""
    logger = get()
    for old in list(logger.handlers):
        logger.removeHandler(old)
        old.close()
    logger.addHandler(handler)
    logger.setLevel(_LEVELS.get(settings.level, logging.INFO))
    logger.propagate = False
