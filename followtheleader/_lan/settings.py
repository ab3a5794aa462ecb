"""The settings of a LAN backend (mDNS or listed peers), as plain values.

The facade turns its validated options into :class:`LanSettings`, so that the LAN code knows
nothing of the facade's option parsing (dependencies point down the layers).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from .._wire.auth import Secret
from .peers import PeerEntry

__all__ = ["LanSettings"]


@dataclass(frozen=True)
class LanSettings:
    """What the heartbeat socket, the ticker, mDNS and the peer list need.

    The fields mean what the options of the same name mean (see
    :class:`followtheleader.Options`); ``peers`` is None in mDNS mode.
    """

    name: str
    node_id: str
    priority: int = 0
    type: str = "ftl"
    port: int = 9001
    port_explicit: bool = False
    host: str = "0.0.0.0"
    interval: float = 0.2
    max_failed_responses: int = 3
    interfaces: tuple[str, ...] | None = None
    ip_version: str = "v4"
    npm_compat: bool = True
    quorum: int | None = None
    secret: tuple[Secret, ...] | None = field(default=None, repr=False)
    peers: tuple[PeerEntry, ...] | None = None

    @property
    def service_type(self) -> str:
        """The fully qualified DNS-SD type, e.g. ``_ftl._udp.local.``."""
        return f"_{self.type}._udp.local."
