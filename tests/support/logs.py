"""The gateway's log lines as a test sees them: captured in this process, as JSON."""
from __future__ import annotations

import contextlib
import io
import logging
from collections.abc import Iterator

from gateway import log as gwlog


@contextlib.contextmanager
def captured_log(level: int = logging.INFO) -> Iterator[io.StringIO]:
    """The gateway's log lines written while the block runs, one JSON object a line."""
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(gwlog.JsonFormatter())
    logger = gwlog.get()
    old_level = logger.level
    logger.addHandler(handler)
    logger.setLevel(level)
    try:
        yield stream
    finally:
        logger.removeHandler(handler)
        logger.setLevel(old_level)
