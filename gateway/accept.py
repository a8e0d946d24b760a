"""Accepting from a listening socket: the one accept loop of the workers and of the
metrics server.

design: asyncio's `_accept_connection` is the model. `accept_batch` takes up to `batch`
connections per readiness event (the loop is level-triggered: it calls again while
more wait) and sorts accept(2)'s errors in one place:
- nothing left to accept (EAGAIN), or interrupted: the batch ends;
- the client went before it was taken (ECONNABORTED, and the pending network errors
  Linux's accept(2) says to treat like EAGAIN): skipped, the batch goes on;
- out of descriptors or kernel memory (EMFILE, ENFILE, ENOBUFS, ENOMEM): `exhausted`
  is called and the batch ends; the caller stops reading its listener for
  ACCEPT_PAUSE (else the loop would spin on it), one pause at a time, and says so at
  most once a second or so;
- anything else: `failed` is called and the batch ends.
"""
from __future__ import annotations

import errno
from collections.abc import Callable, Iterator
from typing import Any, TypeVar

ACCEPT_BATCH = 64     # connections taken per readiness event
ACCEPT_PAUSE = 0.25   # seconds without accepting after descriptors ran out
FD_EXHAUSTED = frozenset({errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM})
_CLIENT_GONE = frozenset({errno.ECONNABORTED, errno.EPROTO, errno.ENETDOWN, errno.ENOPROTOOPT,
                          errno.EHOSTDOWN, errno.ENONET, errno.EHOSTUNREACH, errno.EOPNOTSUPP,
                          errno.ENETUNREACH})

Conn = TypeVar("Conn")


def accept_batch(accept: Callable[[], tuple[Conn, Any]], batch: int,
                 exhausted: Callable[[OSError], None],
                 failed: Callable[[OSError], None]) -> Iterator[tuple[Conn, Any]]:
    """Yield (connection, address) from `accept()` until none is waiting or `batch`
    were taken (the caller may stop earlier: `break`)."""
    for _ in range(batch):
        try:
            pair = accept()
        except (BlockingIOError, InterruptedError):
            return
        except OSError as exc:
            if exc.errno in _CLIENT_GONE:
                continue
            if exc.errno in FD_EXHAUSTED:
                exhausted(exc)
            else:
                failed(exc)
            return
        yield pair
