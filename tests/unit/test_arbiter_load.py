"""The master's load aggregates (health.py `refresh_load`): refreshed each period only
while a policy reads them (--max-connections, least-connections), and at once when a
reload sets such a policy, so no worker reads old sums."""
import pytest

from gateway import config
from gateway.arbiter import Arbiter
from gateway.health import G_OPEN, GATEWAY


def _arbiter(*flags: str) -> Arbiter:
    argv = ["--endpoints=127.0.0.1:2379", *flags]
    return Arbiter(config.load(argv, {}), argv, {})


@pytest.fixture
def make_arbiter():
    made: list[Arbiter] = []

    def make(*flags: str) -> Arbiter:
        made.append(_arbiter(*flags))
        return made[-1]
    yield make
    for master in made:
        master.loop.close()


def _two_workers(master: Arbiter) -> tuple[int, int]:
    return master.table.claim_worker_slot(10), master.table.claim_worker_slot(11)


def _holds(master: Arbiter, worker: int, clients: int) -> None:
    master.table.set_at(master.table.counter_offset(worker, GATEWAY, G_OPEN), clients)


def test_without_a_policy_that_reads_them_the_master_leaves_the_load_aggregates_alone(
        make_arbiter):
    master = make_arbiter()
    master._set_load_policy(master.config)
    me, other = _two_workers(master)
    _holds(master, other, 3)
    master._refresh_load()
    assert master.table.open_connections(me, own=0) == 0   # not summed: nobody reads it


@pytest.mark.parametrize("policy", ["--max-connections=100", "--balance=least-connections"])
def test_with_a_policy_that_reads_them_the_master_refreshes_the_load_aggregates(
        make_arbiter, policy):
    master = make_arbiter(policy)
    master._set_load_policy(master.config)
    me, other = _two_workers(master)
    _holds(master, other, 3)
    master._refresh_load()
    assert master.table.open_connections(me, own=0) == 3


def test_a_policy_set_by_a_reload_reads_fresh_aggregates_at_once(make_arbiter):
    master = make_arbiter()
    master._set_load_policy(master.config)
    me, other = _two_workers(master)
    _holds(master, other, 3)
    master._refresh_load()
    _holds(master, other, 5)
    argv = ["--endpoints=127.0.0.1:2379", "--max-connections=100"]
    master._set_load_policy(config.load(argv, {}))        # what a reload applies
    assert master.table.open_connections(me, own=0) == 5  # before the next period


def test_without_a_policy_that_reads_them_the_master_sets_no_refresh_timer(make_arbiter):
    master = make_arbiter()
    master._set_load_policy(master.config)
    assert master._load_timer is None  # an idle master does not wake for it


def test_a_reload_that_sets_such_a_policy_starts_the_refresh_timer(make_arbiter):
    master = make_arbiter()
    master._set_load_policy(master.config)
    argv = ["--endpoints=127.0.0.1:2379", "--balance=least-connections"]
    master._set_load_policy(config.load(argv, {}))
    assert master._load_timer is not None


def test_the_refresh_timer_lapses_once_a_reload_drops_the_policy(make_arbiter):
    master = make_arbiter("--max-connections=100")
    master._set_load_policy(master.config)
    timer = master._load_timer
    assert timer is not None
    master._set_load_policy(config.load(["--endpoints=127.0.0.1:2379"], {}))
    assert master._load_timer is timer   # one timer, never two
    master._refresh_load()               # its next run
    assert master._load_timer is None
