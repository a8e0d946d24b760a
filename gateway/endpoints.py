"""What an endpoint is, how a roster is ordered, and how many of everything there can be.

design: plain values shared by the modules that find endpoints (discovery, srv,
resolver), the one that publishes them (health.py, the shared table) and the ones
that use them (picker, worker, checks), so none of them imports the shared-memory
table to get a dataclass. The limits are defined here once: the table is sized from
them and the configuration refuses values past them.
"""
from __future__ import annotations

import enum
from dataclasses import dataclass

from gateway.addresses import join_host_port, with_zone

MAX_ENDPOINTS = 64        # roster slots in the shared table
MAX_WORKER_SLOTS = 128    # worker slots in the shared table
MAX_WORKERS = MAX_WORKER_SLOTS // 2  # --workers: a reload starts the new workers
                                     # before the old ones leave, so half the slots
MAX_LISTENERS = 16        # listener counter columns in the shared table


class Order(enum.IntEnum):
    """How workers order the roster: decided by where the endpoints came from
    (`order_for`), published with the roster, read by every worker."""
    ROUND_ROBIN = 0   # --endpoints: plain round robin over the healthy ones
    RFC2782 = 1       # --discovery-srv: priority classes, weighted within a class


def order_for(discovery_srv: str) -> Order:
    """The order of a roster found with (RFC 2782) or without SRV discovery."""
    return Order.RFC2782 if discovery_srv else Order.ROUND_ROBIN


@dataclass(frozen=True)
class Endpoint:
    """An endpoint as published in the roster: where to connect, and how to call it."""
    label: str            # what the operator wrote (or the SRV target), for logs
    family: int
    ip: str
    port: int
    priority: int = 0
    weight: int = 0
    scope_id: int = 0     # the interface of a link-local IPv6 address (its %zone)

    @property
    def sockaddr(self) -> tuple:
        if self.scope_id:
            return (self.ip, self.port, 0, self.scope_id)
        return (self.ip, self.port)

    @property
    def address(self) -> str:
        return join_host_port(with_zone(self.ip, self.scope_id), self.port)


@dataclass(frozen=True)
class RosterEntry:
    slot: int
    endpoint: Endpoint
