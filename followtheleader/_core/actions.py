"""What the LAN machine decides: the actions its caller carries out after each input."""

from __future__ import annotations

from dataclasses import dataclass

from .messages import Message
from .model import Event, State

__all__ = ["Action", "Notify", "NpmPing", "Publish", "Send"]


@dataclass(frozen=True)
class Send:
    """Send ``message`` to node ``to`` at ``address`` over the heartbeat socket."""

    message: Message
    address: tuple[str, int]
    to: str


@dataclass(frozen=True)
class NpmPing:
    """Send the npm package's bare ``PING`` to the npm leader at ``address``."""

    address: tuple[str, int]


@dataclass(frozen=True)
class Publish:
    """Publish this node's role and term in its DNS-SD TXT record; with ``serve_npm``, also
    the records npm nodes look for (an announced leader with ``npm_compat``, once it has led
    for :data:`NPM_HOLD`); without, withdraw them."""

    role: State
    term: int
    serve_npm: bool = False


@dataclass(frozen=True)
class Notify:
    """Deliver ``event`` to the callbacks."""

    event: Event


Action = Send | NpmPing | Publish | Notify
