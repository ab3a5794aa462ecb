"""Idle members cost the coordination service at most one request per second each, counted
by the server's own counter (:meth:`coordservers.ServerSet.requests_served`): they wait on
watches instead of polling. The figure itself comes from ``benchmarks/idle_load.py``."""

from __future__ import annotations

import threading
import time
from typing import Any

import pytest

from cluster import Cluster
from coordservers import ServerPool, ServerSet, unavailable_reason
from netlab import Host, Lab

MEMBERS = 3
TTL = 10.0
"""The library's default TTL: renewals every 2 s."""
WINDOW = 12.0


@pytest.fixture(params=["zookeeper", "etcd"])
def single(request: Any, lab: Lab, coordinator_servers: ServerPool) -> ServerSet:
    reason = unavailable_reason(request.param)
    if reason:
        pytest.skip(reason)
    return coordinator_servers.get(lab, request.param, 1)


@pytest.mark.lab
def test_idle_members_cost_the_server_at_most_one_request_per_second_each(
    cluster: Cluster, hosts: list[Host], single: ServerSet
) -> None:
    options = {"coordinator": single.url, "coordinator_ttl": TTL}
    cluster.start_together(hosts[:MEMBERS], options=options)
    cluster.wait_agreement(timeout=30)
    # A measurement window, not a synchronisation: nothing is waited for but time itself.
    quiet = threading.Event()  # never set
    quiet.wait(TTL * 0.2 + 1.0)  # the first renewals after the election pass
    before, started = single.requests_served(), time.monotonic()
    quiet.wait(WINDOW)
    after, ended = single.requests_served(), time.monotonic()
    rate = (after - before) / (ended - started) / MEMBERS
    assert rate <= 1.0, f"{rate:.2f} requests/s per idle member"
    with cluster.changed:
        assert len({role.leader for role in cluster.roles_locked().values()}) == 1  # still one leader
