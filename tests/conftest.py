"""Shared pytest fixtures: a real etcd cluster and a factory of gateway processes.

Design: the etcd cluster is module-scoped (starting one takes well under a
second here, but a module's tests can share it; tests that kill or pause a
member must restore it, e.g. with ``cluster.restart(i)`` / ``cluster.resume(i)``).
Gateways are function-scoped: every one a test creates is stopped at teardown,
even when the test fails.
"""
from __future__ import annotations

import pathlib
import sys
from typing import Callable, Iterator, Mapping

import pytest

# `tests.support` is imported as a package of the checkout, whatever the cwd
# and however pytest was started (tests/ has no __init__.py).
_REPO = pathlib.Path(__file__).resolve().parents[1]
if str(_REPO) not in sys.path:
    sys.path.insert(0, str(_REPO))

from tests.support.etcd_cluster import EtcdCluster  # noqa: E402 - needs the path above
from tests.support.gateway_proc import READY_MSG, GatewayProcess  # noqa: E402

GatewayFactory = Callable[..., GatewayProcess]


@pytest.fixture(scope="module")
def etcd_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EtcdCluster]:
    cluster = EtcdCluster(tmp_path_factory.mktemp("etcd"), size=3)
    cluster.start(timeout=30)
    try:
        yield cluster
    finally:
        cluster.stop()


@pytest.fixture
def gateway_factory(tmp_path: pathlib.Path) -> Iterator[GatewayFactory]:
    """``gateway_factory(args, env=None, start=True, wait_for=READY_MSG, timeout=15, prefix=None)``.

    Returns a GatewayProcess, started (and ready) unless ``start=False``.
    """
    created: list[GatewayProcess] = []

    def make(
        args: list[str],
        env: Mapping[str, str] | None = None,
        start: bool = True,
        wait_for: str | None = READY_MSG,
        timeout: float = 15,
        prefix: list[str] | None = None,
    ) -> GatewayProcess:
        gw = GatewayProcess(args, env=env, workdir=tmp_path / f"gw{len(created)}", prefix=prefix)
        created.append(gw)
        if start:
            gw.start(wait_for=wait_for, timeout=timeout)
        return gw

    try:
        yield make
    finally:
        errors: list[BaseException] = []
        for gw in reversed(created):
            try:
                gw.stop()
            except BaseException as exc:  # noqa: BLE001 - keep stopping the others
                errors.append(exc)
        if errors:
            raise errors[0]
