"""The gateway's footprint: open descriptors and resident memory, master and workers summed.

design: psutil over the master's pid and all its descendants at the moment of the
sample; a process that exits between listing and reading is skipped (it holds
nothing any more).
"""
from __future__ import annotations

from dataclasses import dataclass

import psutil


@dataclass(frozen=True)
class Footprint:
    processes: int
    fds: int
    rss: int   # bytes

    @property
    def rss_mib(self) -> float:
        return self.rss / (1 << 20)


def footprint(master_pid: int) -> Footprint:
    try:
        master = psutil.Process(master_pid)
        procs = [master, *master.children(recursive=True)]
    except psutil.NoSuchProcess:
        return Footprint(0, 0, 0)
    count = fds = rss = 0
    for p in procs:
        try:
            with p.oneshot():
                fds += p.num_fds()
                rss += p.memory_info().rss
            count += 1
        except psutil.NoSuchProcess:
            continue
    return Footprint(count, fds, rss)
