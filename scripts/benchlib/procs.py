"""Processes the bench starts, and what /proc says about them.

design: every process the bench starts goes through `Managed`, which records it
in one registry; `stop_all()` (called from finally blocks, atexit and the
SIGTERM/SIGINT handler) stops each one by its PID: SIGTERM, a bounded wait,
then SIGKILL, and SIGKILL again for any descendant (a pre-fork worker) that
outlived its master, identified by PID *and* start time so a recycled PID is
never hit.  No name-based killing anywhere.

Resource figures come straight from /proc (no psutil needed): CPU seconds
(utime+stime), resident set size and open descriptors, summed over a process
and all its descendants.
"""
import os
import signal
import socket
import subprocess
import time

CLK_TCK = os.sysconf("SC_CLK_TCK")
PAGE = os.sysconf("SC_PAGE_SIZE")

_registry = []


def _stat_fields(pid):
    """Fields of /proc/PID/stat after the command name (index 0 = state)."""
    with open(f"/proc/{pid}/stat", "rb") as f:
        data = f.read()
    return data[data.rindex(b")") + 2:].split()


def start_time(pid):
    try:
        return int(_stat_fields(pid)[19])
    except (OSError, ValueError, IndexError):
        return None


def running_same(pid, st):
    """True while pid is the process that had start time st and is not a zombie."""
    try:
        f = _stat_fields(pid)
        return f[0] != b"Z" and int(f[19]) == st
    except (OSError, ValueError, IndexError):
        return False


def children_map():
    """ppid -> [pid] for every process visible in /proc."""
    kids = {}
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            ppid = int(_stat_fields(name)[1])
        except (OSError, ValueError, IndexError):
            continue
        kids.setdefault(ppid, []).append(int(name))
    return kids


def tree(pid):
    """pid and all its live descendants (breadth first)."""
    kids = children_map()
    out, todo = [], [pid]
    while todo:
        p = todo.pop(0)
        if p in out:
            continue
        out.append(p)
        todo.extend(kids.get(p, []))
    return [p for p in out if os.path.exists(f"/proc/{p}")]


def tree_stats(pid):
    """CPU seconds, RSS bytes and open fds summed over pid and its descendants."""
    cpu_ticks = rss = fds = 0
    pids = []
    for p in tree(pid):
        try:
            f = _stat_fields(p)
            ticks = int(f[11]) + int(f[12])  # utime, stime
            with open(f"/proc/{p}/statm") as fh:
                resident = int(fh.read().split()[1]) * PAGE
            nfd = len(os.listdir(f"/proc/{p}/fd"))
        except (OSError, ValueError, IndexError):
            continue  # exited while we looked
        cpu_ticks += ticks
        rss += resident
        fds += nfd
        pids.append(p)
    return {"cpu_s": cpu_ticks / CLK_TCK, "rss": rss, "fds": fds, "pids": pids}


def system_busy_s():
    """CPU seconds the whole machine spent busy (user, nice, system, irq, softirq) since boot."""
    with open("/proc/stat") as f:
        v = [int(x) for x in f.readline().split()[1:8]]
    user, nice, system, _idle, _iowait, irq, softirq = v
    return (user + nice + system + irq + softirq) / CLK_TCK


def system_steal_s():
    """CPU seconds the hypervisor ran other guests while this machine's CPUs wanted to
    run (/proc/stat "steal"), since boot; 0 on bare metal."""
    with open("/proc/stat") as f:
        v = f.readline().split()
    return int(v[8]) / CLK_TCK if len(v) > 8 else 0.0


def own_cpu_s():
    """CPU seconds used by this process and every descendant, live or reaped.

    utime+stime+cutime+cstime of each live process in our tree: a reaped child's
    time is in its parent's cutime/cstime, so each CPU second counts once."""
    total = 0
    for p in tree(os.getpid()):
        try:
            f = _stat_fields(p)
            total += int(f[11]) + int(f[12]) + int(f[13]) + int(f[14])
        except (OSError, ValueError, IndexError):
            continue
    return total / CLK_TCK


class ForeignLoad:
    """Share of the machine's CPUs used by processes the bench did not start,
    between start() and stop(): (machine busy - bench tree) / (wall x CPUs)."""

    def __init__(self):
        self.t = time.monotonic()
        self.busy = system_busy_s()
        self.own = own_cpu_s()
        self.steal = system_steal_s()

    def stolen(self):
        """Share of the CPUs' time the hypervisor gave to other guests since start():
        load this machine cannot see as processes (a shared host), which slows every
        peer unevenly, the one measured at that moment most."""
        wall = time.monotonic() - self.t
        if wall <= 0:
            return 0.0
        return max(0.0, (system_steal_s() - self.steal) / (wall * (os.cpu_count() or 1)))

    def fraction(self):
        wall = time.monotonic() - self.t
        if wall <= 0:
            return 0.0
        foreign = (system_busy_s() - self.busy) - (own_cpu_s() - self.own)
        return max(0.0, foreign / (wall * (os.cpu_count() or 1)))


def free_port():
    """A port on 127.0.0.1 that nothing listens on right now."""
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]
    finally:
        s.close()


def listening(port):
    """True when some socket LISTENs on 127.0.0.1:port or *:port (reads /proc/net/tcp).

    Used for readiness instead of a test connection, so no probe connection
    reaches a backend (iperf3's server dislikes connections without a test)."""
    want = f"{port:04X}"
    for path in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            with open(path) as f:
                next(f)
                for line in f:
                    parts = line.split()
                    local, state = parts[1], parts[3]
                    if state == "0A" and local.rsplit(":", 1)[1] == want:
                        return True
        except OSError:
            continue
    return False


def port_accepts(port, timeout=0.5):
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=timeout):
            return True
    except OSError:
        return False


def _die_with_parent():
    """preexec_fn: ask the kernel to SIGTERM the child if the bench dies, even by SIGKILL."""
    try:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except Exception:  # noqa: BLE001 - best effort; the registry still stops it
        pass


class StartError(Exception):
    pass


class Managed:
    """One process started by the bench, in its own session, logged to a file."""

    def __init__(self, name, argv, log_path, stdin=subprocess.DEVNULL, stdout=None, cwd=None, env=None):
        self.name = name
        self.argv = [str(a) for a in argv]
        self.log_path = log_path
        self._log = open(log_path, "ab")
        self._log.write(("\n### " + " ".join(self.argv) + "\n").encode())
        self._log.flush()
        self.proc = subprocess.Popen(
            self.argv,
            stdin=stdin,
            stdout=stdout if stdout is not None else self._log,
            stderr=self._log,
            cwd=cwd,
            env=env,
            start_new_session=True,
            preexec_fn=_die_with_parent,
        )
        self.pid = self.proc.pid
        self.stime = start_time(self.pid)
        _registry.append(self)

    def alive(self):
        return self.proc.poll() is None

    def log_tail(self, n=8):
        try:
            with open(self.log_path, "rb") as f:
                lines = f.read().decode(errors="replace").strip().splitlines()
            return "\n".join(lines[-n:])
        except OSError:
            return ""

    def stop(self, grace=10.0):
        """SIGTERM the PID, wait at most `grace` s, SIGKILL; then SIGKILL leftover
        descendants (same PID and start time as seen before the SIGTERM)."""
        if self in _registry:
            _registry.remove(self)
        leftovers = []
        if self.alive():
            leftovers = [(p, start_time(p)) for p in tree(self.pid) if p != self.pid]
            try:
                os.kill(self.pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
            try:
                self.proc.wait(timeout=grace)
            except subprocess.TimeoutExpired:
                try:
                    os.kill(self.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
                try:
                    self.proc.wait(timeout=5)
                except subprocess.TimeoutExpired:
                    pass
        deadline = time.monotonic() + 3.0
        for pid, st in leftovers:
            while st is not None and running_same(pid, st) and time.monotonic() < deadline:
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    break
                time.sleep(0.02)
        try:
            self._log.close()
        except OSError:
            pass
        return self.proc.returncode


def stop_all():
    for m in list(reversed(_registry)):
        try:
            m.stop(grace=5.0)
        except Exception:  # noqa: BLE001 - best effort on the way out
            pass


def install_signal_handlers():
    def handler(signum, frame):  # noqa: ARG001
        raise SystemExit(128 + signum)

    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(sig, handler)


def wait_until(pred, timeout, interval=0.05):
    """Poll pred() until true or timeout (bounded); returns its last value."""
    deadline = time.monotonic() + timeout
    while True:
        v = pred()
        if v or time.monotonic() >= deadline:
            return v
        time.sleep(interval)
