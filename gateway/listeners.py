"""The listening sockets: TCP or unix, bound by the master or adopted from systemd.

design: the master owns its listeners for its whole life and hands them to every
worker through fork; it never accepts on them. `:PORT` and `[::]:PORT` bind every
interface, IPv4 and IPv6 (dual stack where the host has IPv6). TCP_NODELAY and
SO_KEEPALIVE are set on a TCP listener so accepted sockets inherit them (Linux copies
them at accept), which saves two system calls per client on the hot path; each
master sets the keepalive timers on it the same way (gateway/keepalive.py). A unix
listener gets no TCP option, and nothing downstream may assume one on a client socket.

A unix socket file is made with the mode and group asked for (`--listen-socket-mode`,
`--listen-socket-group`: file permissions are then the access control). A file left
by a crashed gateway (nobody accepts on it: connect is refused) is replaced; one that
a live process serves is never stolen (ListenError). The master removes the file when
it closes the listener (reload that drops it, drain, exit), and only if the file is
still the one it made (same device and inode), never from a forked child.

Socket activation: every socket systemd passes (LISTEN_FDS, from fd 3) is adopted as
it is, TCP or unix; --listen-addr is then not used (systemd's socket unit says where
to listen), and systemd owns the unix socket files.
"""
from __future__ import annotations

import enum
import errno
import grp
import os
import socket
import stat
from dataclasses import dataclass, field

from gateway import log as gwlog
from gateway.addresses import HostPort, ListenAddr, UnixPath, join_host_port

logger = gwlog.get("listeners")

BACKLOG = 4096  # the kernel caps it at net.core.somaxconn
SD_LISTEN_FDS_START = 3


class ListenError(Exception):
    """The listen address cannot be bound (one line, for the operator)."""


def _tune(sock: socket.socket) -> None:
    if sock.family in (socket.AF_INET, socket.AF_INET6):
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
    sock.set_inheritable(True)


class Kind(enum.Enum):
    TCP = "tcp"
    UNIX = "unix"


@dataclass(eq=False)
class Listener:
    """One listening socket and what the gateway calls it (`label`: logs and the
    `listener` label of metrics). `addr` is the configured address it was bound for,
    None when adopted from systemd."""
    sock: socket.socket
    label: str
    kind: Kind
    addr: ListenAddr | None
    slot: int = -1                      # its column in the health table (the master's)
    _file: tuple[int, int, int] | None = field(default=None, repr=False)  # pid, dev, ino

    def fileno(self) -> int:
        return self.sock.fileno()

    def close(self) -> None:
        """Close the socket; in the process that made a unix socket file, remove the
        file too if it is still ours."""
        self.sock.close()
        if self._file is None or self._file[0] != os.getpid():
            return
        _, dev, ino = self._file
        self._file = None
        assert isinstance(self.addr, UnixPath)
        try:
            st = os.lstat(self.addr.path)
            if (st.st_dev, st.st_ino) == (dev, ino):
                os.unlink(self.addr.path)
        except OSError:
            pass

    def set_permissions(self, mode: int, group: str) -> None:
        """chmod/chown the unix socket file we made (nothing for TCP or adopted ones)."""
        if self._file is None or not isinstance(self.addr, UnixPath):
            return
        _chmod_chown(self.addr.path, mode, group)


def open_listener(addr: ListenAddr, mode: int, group: str) -> Listener:
    """Bind `addr` (TCP, or a unix socket file with `mode` and `group`)."""
    if isinstance(addr, UnixPath):
        sock, ident = _bind_unix(addr.path, mode, group)
        return Listener(sock, str(addr), Kind.UNIX, addr, _file=(os.getpid(), *ident))
    sock = bind(addr)
    return Listener(sock, bound_address(sock), Kind.TCP, addr)


def group_id(group: str) -> int:
    """The gid of a group name or number; ValueError when there is no such group."""
    if group.isdigit():
        return int(group)
    try:
        return grp.getgrnam(group).gr_gid
    except KeyError:
        raise ValueError(f"no group named {group!r}") from None


def _chmod_chown(path: str, mode: int, group: str) -> None:
    if group:
        os.chown(path, -1, group_id(group))
    os.chmod(path, mode)


def _bind_unix(path: str, mode: int, group: str) -> tuple[socket.socket, tuple[int, int]]:
    option = "--listen-addr"
    _clear_stale_socket(path)
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        old_umask = os.umask(0o177)  # no window in which others may connect
        try:
            sock.bind(path)
        finally:
            os.umask(old_umask)
        try:
            _chmod_chown(path, mode, group)
        except (OSError, ValueError) as exc:
            os.unlink(path)
            raise ListenError(f"option --listen-socket-group/--listen-socket-mode: cannot "
                              f"set {mode:04o} {group or '(own group)'} on {path}: "
                              f"{getattr(exc, 'strerror', None) or exc}") from None
        st = os.lstat(path)
        sock.listen(BACKLOG)
        sock.setblocking(False)
        _tune(sock)
    except OSError as exc:
        sock.close()
        if exc.errno != errno.EADDRINUSE:
            _unlink_quietly(path)  # bound but not listening: leave nothing behind
        raise ListenError(f"option {option}: cannot listen on unix://{path}: "
                          f"{exc.strerror}") from None
    except BaseException:
        sock.close()
        raise
    return sock, (st.st_dev, st.st_ino)


def _unlink_quietly(path: str) -> None:
    try:
        os.unlink(path)
    except OSError:
        pass


def _clear_stale_socket(path: str) -> None:
    """Remove a socket file nobody serves; refuse a live one or a non-socket file."""
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return
    except OSError as exc:
        raise ListenError(f"option --listen-addr: cannot use unix://{path}: "
                          f"{exc.strerror}") from None
    if not stat.S_ISSOCK(st.st_mode):
        raise ListenError(f"option --listen-addr: unix://{path} exists and is not a socket; "
                          "not replacing it")
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    probe.settimeout(1.0)
    try:
        probe.connect(path)
    except ConnectionRefusedError:
        pass  # stale: left by a process that is gone
    except FileNotFoundError:
        return
    except OSError as exc:
        if exc.errno in (errno.EAGAIN, errno.ETIMEDOUT) or isinstance(exc, TimeoutError):
            raise ListenError(f"option --listen-addr: unix://{path} is in use by another "
                              "process (its backlog is full); not replacing it") from None
        raise ListenError(f"option --listen-addr: cannot probe unix://{path}: "
                          f"{exc.strerror}") from None
    else:
        raise ListenError(f"option --listen-addr: unix://{path} is in use by another "
                          "process; not replacing it")
    finally:
        probe.close()
    try:
        os.unlink(path)
    except FileNotFoundError:
        return
    except OSError as exc:
        raise ListenError(f"option --listen-addr: cannot remove the stale socket "
                          f"unix://{path}: {exc.strerror}") from None
    logger.info("replaced a stale unix socket file", extra=gwlog.fields(path=path))


def bind(addr: HostPort, option: str = "--listen-addr") -> socket.socket:
    """A listening, non-blocking socket on `addr`; ListenError names `option`."""
    host = addr.host
    if host in ("", "::"):
        try:
            return _bind(socket.AF_INET6, ("::", addr.port), dual_stack=True)
        except OSError as exc:
            if host == "::":
                raise ListenError(f"option {option}: cannot listen on {addr}: {exc.strerror}") from None
            host = "0.0.0.0"
    try:
        infos = socket.getaddrinfo(host, addr.port, socket.AF_UNSPEC, socket.SOCK_STREAM,
                                   0, socket.AI_PASSIVE)
    except (socket.gaierror, UnicodeError) as exc:
        raise ListenError(f"option {option}: cannot resolve {addr}: "
                          f"{getattr(exc, 'strerror', None) or exc}") from None
    family, _, _, _, sockaddr = sorted(infos, key=lambda i: i[0] != socket.AF_INET)[0]
    try:
        return _bind(family, sockaddr, dual_stack=False)
    except OSError as exc:
        raise ListenError(f"option {option}: cannot listen on {addr}: {exc.strerror}") from None


def _bind(family: int, sockaddr: tuple, dual_stack: bool) -> socket.socket:
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if family == socket.AF_INET6:
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0 if dual_stack else 1)
        sock.bind(sockaddr)
        sock.listen(BACKLOG)
        sock.setblocking(False)
        _tune(sock)
    except BaseException:
        sock.close()
        raise
    return sock


def systemd_listeners(environ: dict[str, str] | None = None) -> list[Listener]:
    """Every socket systemd passed (LISTEN_FDS/LISTEN_PID, from fd 3), as it is."""
    env = os.environ if environ is None else environ
    try:
        pid, count = int(env.get("LISTEN_PID", "0")), int(env.get("LISTEN_FDS", "0"))
    except ValueError:
        return []
    if pid != os.getpid() or count < 1:
        return []
    out: list[Listener] = []
    for fd in range(SD_LISTEN_FDS_START, SD_LISTEN_FDS_START + count):
        try:
            sock = socket.socket(fileno=fd)
        except OSError as exc:
            raise ListenError(f"socket activation (LISTEN_FDS={count}): fd {fd} is not a "
                              f"socket: {exc.strerror}") from None
        if sock.type != socket.SOCK_STREAM:
            raise ListenError(f"socket activation: fd {fd} is not a stream socket")
        sock.setblocking(False)
        _tune(sock)
        if sock.family == socket.AF_UNIX:
            name = sock.getsockname()
            label = "unix://" + (name if isinstance(name, str) else repr(name))
            out.append(Listener(sock, label, Kind.UNIX, None))
        else:
            out.append(Listener(sock, bound_address(sock), Kind.TCP, None))
    return out


def bound_address(sock: socket.socket) -> str:
    host, port = sock.getsockname()[:2]
    return join_host_port(host, port)
