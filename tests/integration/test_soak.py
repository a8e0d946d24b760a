"""The chaos soak, short: `scripts/soak --duration 60` ends in `soak: PASS`, exit 0.

The soak runs a real three-member etcd cluster behind the real gateway, the same
load through the gateway and directly, and stages member kills and SIGSTOPs,
reloads, worker SIGKILLs and a connection burst (see scripts/soaklib/chaos.py).
"""
import pathlib
import signal
import subprocess

import pytest

pytestmark = pytest.mark.integration

REPO = pathlib.Path(__file__).resolve().parents[2]
BOUND = 600  # seconds: 60 of faults, ~20 of set-up and checks, a loaded machine


def test_a_short_chaos_soak_passes(tmp_path):
    proc = subprocess.Popen(
        [str(REPO / "scripts" / "soak"), "--duration", "60", "--workdir", str(tmp_path / "soak")],
        cwd=REPO, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
        text=True)
    try:
        out, _ = proc.communicate(timeout=BOUND)
    except subprocess.TimeoutExpired:
        proc.send_signal(signal.SIGTERM)  # the soak stops its cluster and gateway, by pid
        out, _ = proc.communicate(timeout=120)
        pytest.fail(f"scripts/soak still running after {BOUND}s:\n{out[-6000:]}")
    lines = out.strip().splitlines()
    assert proc.returncode == 0 and lines[-1] == "soak: PASS", out[-8000:]
