"""What each lane's watch was owed: the store's own history of the lane's prefix.

design: after the load stops, a sentinel put (directly to a member) closes each
lane's prefix at a known revision; a fresh watch from the soak's start revision
to that sentinel, opened directly on a member once the cluster is whole again,
replays etcd's history (the soak's cluster never compacts). Every revision in it
was owed to the lane's watcher; every put a writer saw acknowledged must be in it.
"""
from __future__ import annotations

import time
from collections.abc import Callable

from scripts.soaklib.etcdhttp import EtcdError, KvClient, WatchStream


def sentinel(addrs: list[str], prefix: bytes, timeout: float) -> int:
    """Put ``prefix + b"~end"`` (trying each member in turn); its revision."""
    client = KvClient(timeout=2.0)
    deadline = time.monotonic() + timeout
    errors: list[str] = []
    try:
        while time.monotonic() < deadline:
            for addr in addrs:
                try:
                    return client.put(addr, prefix + b"~end", b"end").revision
                except EtcdError as exc:
                    errors.append(f"{addr}: {exc}")
            time.sleep(0.2)
    finally:
        client.close()
    raise RuntimeError(f"sentinel put failed for {timeout:.0f}s: {errors[-1:]}")


def history(addrs: list[str], prefix: bytes, start_revision: int, until: int,
            timeout: float) -> set[int]:
    """Revisions of every change under ``prefix`` in [start_revision, until]."""
    deadline = time.monotonic() + timeout
    revisions: set[int] = set()
    last = start_revision - 1
    errors: list[str] = []
    i = 0
    while time.monotonic() < deadline:
        addr = addrs[i % len(addrs)]
        i += 1
        try:
            stream = WatchStream(addr, prefix, last + 1, 2.0)
        except EtcdError as exc:
            errors.append(f"{addr}: {exc}")
            time.sleep(0.2)
            continue
        try:
            while time.monotonic() < deadline:
                for ev in stream.poll(0.5):
                    if ev.revision <= until:
                        revisions.add(ev.revision)
                    last = max(last, ev.revision)
                if last >= until:
                    return revisions
        except EtcdError as exc:
            errors.append(f"{addr}: {exc}")
        finally:
            stream.close()
    raise RuntimeError(f"history of {prefix!r} up to {until} not read in {timeout:.0f}s "
                       f"(reached {last}): {errors[-1:]}")


def wait_caught_up(last_seen: Callable[[], int], until: int, timeout: float) -> bool:
    """Wait until ``last_seen()`` reaches ``until``; False after ``timeout``."""
    deadline = time.monotonic() + timeout
    while last_seen() < until:
        if time.monotonic() > deadline:
            return False
        time.sleep(0.1)
    return True
