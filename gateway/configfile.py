"""The config file: read once, as bytes, bounded; parsed strictly, line by line.

design: `read(path)` opens the file once and reads at most `MAX_SIZE` bytes from a
regular file, a pipe or a FIFO (`-c <(...)`, `/dev/fd/N`, `/dev/stdin`); a pipe is read
without blocking, under one deadline (`PIPE_WAIT`), so a FIFO nobody writes to is
refused instead of hanging; a directory, a device or a socket is refused at once. What
was read is kept (`ConfigText`), so the same bytes are validated and used, and a pipe,
which cannot be read twice, is not read again on reload. `parse()` accepts UTF-8 with or
without a BOM, `key = value`, `key: value`, `key value` and a bare `key` (true),
comments (`#`, `;`, and ` # ...` after a value), `[section]` and `---` lines (ignored).
Every error is one line naming the file and the line. A key given on two lines is
refused (naming both) unless it is repeatable; then its values accumulate in order.
NUL bytes anywhere and control characters in keys or values are refused.
"""
from __future__ import annotations

import os
import re
import select
import stat
import time
from collections.abc import Callable
from dataclasses import dataclass

MAX_SIZE = 1 << 20       # bytes: a config file is a few hundred
PIPE_WAIT = 5.0          # seconds a pipe or FIFO may take to deliver the whole file
_BOM = b"\xef\xbb\xbf"
CONTROL = re.compile(r"[\x00-\x1f\x7f]")
_LINE = re.compile(r"^(?P<key>[^\s:=;#]+)\s*(?:[:=\s]\s*(?P<value>.*?))?$")
_INLINE_COMMENT = re.compile(r"\s[#;].*$")


class ConfigFileError(Exception):
    """The config file cannot be read or parsed (one line, naming file and line)."""


@dataclass(frozen=True)
class ConfigText:
    """The bytes of a config file as read once; `rereadable` is False for a pipe."""
    path: str
    data: bytes
    rereadable: bool


@dataclass(frozen=True)
class Setting:
    value: str
    line: int


def read(path: str, wait: float = PIPE_WAIT) -> ConfigText:
    """Read `path` once; ConfigFileError (naming `--config` and the path) if it is not
    a regular file or a pipe, is bigger than MAX_SIZE, or a pipe stays open too long."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError as exc:
        raise ConfigFileError(f"option --config: cannot read {path!r}: "
                              f"{exc.strerror}") from None
    try:
        mode = os.fstat(fd).st_mode
        if stat.S_ISREG(mode):
            return ConfigText(path, _read_regular(fd, path), rereadable=True)
        if stat.S_ISFIFO(mode):
            return ConfigText(path, _read_pipe(fd, path, wait), rereadable=False)
        raise ConfigFileError(f"option --config: {path!r} is {_kind(mode)}; want a file, "
                              "a pipe or /dev/fd/N")
    except OSError as exc:
        raise ConfigFileError(f"option --config: cannot read {path!r}: "
                              f"{exc.strerror}") from None
    finally:
        os.close(fd)


def _kind(mode: int) -> str:
    if stat.S_ISDIR(mode):
        return "a directory"
    if stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
        return "a device"
    if stat.S_ISSOCK(mode):
        return "a socket"
    return "not a regular file"


def _too_big(path: str) -> ConfigFileError:
    return ConfigFileError(f"option --config: {path!r} is larger than "
                           f"{MAX_SIZE >> 20} MiB")


def _read_all(next_chunk: Callable[[int], bytes | None], path: str) -> bytes:
    """Chunks from `next_chunk(bytes so far)` until an empty one (end of file); None
    means "nothing yet, ask again". Refused past MAX_SIZE."""
    chunks: list[bytes] = []
    size = 0
    while True:
        chunk = next_chunk(size)
        if chunk is None:
            continue
        if not chunk:
            return b"".join(chunks)
        chunks.append(chunk)
        size += len(chunk)
        if size > MAX_SIZE:
            raise _too_big(path)


def _read_regular(fd: int, path: str) -> bytes:
    return _read_all(lambda size: os.read(fd, MAX_SIZE + 1 - size), path)


def _read_pipe(fd: int, path: str, wait: float) -> bytes:
    """Everything until end of file, within `wait` seconds (a FIFO with no writer
    never reaches end of file: refused when the time is up)."""
    deadline = time.monotonic() + wait
    poller = select.poll()
    poller.register(fd, select.POLLIN)

    def next_chunk(size: int) -> bytes | None:
        left = deadline - time.monotonic()
        if left <= 0 or not poller.poll(left * 1000):
            raise ConfigFileError(
                f"option --config: {path!r} is a pipe that did not reach end of file "
                f"within {wait:g}s (no writer, or one that did not finish)")
        try:
            return os.read(fd, 65536)
        except BlockingIOError:
            return None

    return _read_all(next_chunk, path)


def parse(text: ConfigText, known: set[str], repeatable: set[str]
          ) -> dict[str, list[Setting]]:
    """{key: [Setting, ...]} in file order; only repeatable keys have several."""
    data = text.data[len(_BOM):] if text.data.startswith(_BOM) else text.data
    out: dict[str, list[Setting]] = {}
    for number, raw in enumerate(data.split(b"\n"), start=1):
        where = f"config file {text.path!r} line {number}"
        line = _decode(raw, where).strip()
        if not line or line[0] in "#;[" or line.startswith("---"):
            continue
        match = _LINE.match(line)
        if match is None:
            raise ConfigFileError(f"{where}: cannot read {line!r} (want option = value)")
        key = match.group("key")
        if match.group("value") is None:
            value = "true"  # a bare key: a boolean flag given alone
        else:
            value = _unquote(_INLINE_COMMENT.sub("", match.group("value")).strip())
        bad = CONTROL.search(key + value)
        if bad is not None:
            raise ConfigFileError(f"{where}: control character U+{ord(bad.group()):04X} in "
                                  f"{key!r}: not allowed in a key or value")
        if key not in known:
            raise ConfigFileError(f"{where}: unknown key {key!r} (keys are the long option "
                                  "names, e.g. listen-addr)")
        earlier = out.get(key)
        if earlier is not None and key not in repeatable:
            raise ConfigFileError(f"{where}: {key!r} repeats line {earlier[0].line}; only "
                                  f"{', '.join(sorted(repeatable))} may be given on several "
                                  "lines")
        out.setdefault(key, []).append(Setting(value, number))
    return out


def _decode(raw: bytes, where: str) -> str:
    if b"\0" in raw:
        column = raw.index(0) + 1
        raise ConfigFileError(f"{where}: NUL byte at column {column}: not a text file")
    try:
        return raw.decode("utf-8").rstrip("\r")
    except UnicodeDecodeError as exc:
        raise ConfigFileError(f"{where}: not UTF-8 (byte 0x{raw[exc.start]:02x} at column "
                              f"{exc.start + 1})") from None


def _unquote(value: str) -> str:
    if len(value) >= 2 and value[0] == value[-1] and value[0] in "'\"":
        return value[1:-1]
    return value
