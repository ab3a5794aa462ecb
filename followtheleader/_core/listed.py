"""Unicast mode: the listed addresses, where nodes of the group may be.

A peer list or DNS name gives addresses, not node ids. A candidate or leader pings every
listed address where no live peer is known, on the lost-peer probing schedule, addressed to
ANYONE; whoever is there answers with a pong that names it, and from then on it is an
ordinary peer. In an authenticated group a ping addressed to ANYONE is never proof of life (a
copy of it may be replayed to any node): the elector hands it to ``Machine.on_address_ping``,
which only answers it. Without a secret it carries no stamp, nothing tells it from a ping to
the node itself, and it comes to ``Machine.on_message`` like any other.

This part has no timer of its own: it pings on the heartbeat timer of the role (a candidate's
pings, a leader's beats) and when the list changes.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from .messages import ANYONE
from .model import Member
from .peers import Peer

__all__ = ["ListedAddresses"]

Address = tuple[str, int]


@dataclass
class ListedAddresses:
    """The listed addresses, as placeholder peers, and those that turned out to be this node's."""

    spots: dict[Address, Peer] = field(default_factory=dict)
    """The listed addresses (the whole current list), each as a placeholder peer."""
    own: set[Address] = field(default_factory=set)
    """Listed addresses that turned out to be this node's own."""

    def update(self, addresses: Iterable[Address]) -> list[Address]:
        """Take ``addresses`` as the whole current list; the addresses no longer listed."""
        current = set(addresses)
        removed = [a for a in self.spots if a not in current]
        for address in removed:
            del self.spots[address]
        for host, port in current:
            self.spots.setdefault((host, port), Peer(Member(ANYONE, 0, host, port)))
        return removed

    def ping(self, now: float, known: set[Address], probe: Callable[[Peer, float], bool]) -> None:
        """Probe the listed addresses where no live peer is ``known`` (nor this node is)."""
        for address, spot in self.spots.items():
            if address in known or address in self.own:
                spot.probed_since = spot.last_ping = None  # when it falls silent: probed fast again
                continue
            if spot.probed_since is None:
                spot.probed_since = now
            if not probe(spot, now):
                spot.probed_since = now  # listed addresses are never forgotten: start over
