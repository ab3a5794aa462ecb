"""Zero-configuration leader election on a local network.

::

    from followtheleader import elect

    elector = elect("MyServiceName")
    elector.on("leader", lambda event: print("leading, term", event.term))
    elector.on("follower", lambda event: print("following", event.leader.node_id))
    elector.on("reelection", lambda event: print("role ended:", event.reason))
    elector.start()
"""

from __future__ import annotations

import logging

from ._core.model import Event, FencingToken, Member, State
from ._elector import Elector, elect
from ._lan.discovery import DiscoveryError
from ._lan.heartbeat import HeartbeatPortError
from ._options import Options

__all__ = [
    "DiscoveryError",
    "Elector",
    "Event",
    "FencingToken",
    "HeartbeatPortError",
    "Member",
    "Options",
    "State",
    "__version__",
    "elect",
]

__version__ = "0.3.0.dev0"

logging.getLogger(__name__).addHandler(logging.NullHandler())
