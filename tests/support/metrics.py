"""Reading a running gateway's /metrics page (--metrics-addr) in a test."""
from __future__ import annotations

import urllib.request


def scrape(addr: str) -> dict[str, float]:
    """{series as printed (name and labels): value} of one /metrics page at `addr`."""
    with urllib.request.urlopen(f"http://{addr}/metrics", timeout=5) as resp:
        text = resp.read().decode()
    return {line.split(" ")[0]: float(line.split(" ")[1])
            for line in text.splitlines() if line and not line.startswith("#")}
