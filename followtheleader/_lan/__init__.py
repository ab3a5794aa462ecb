"""LAN I/O: the heartbeat socket, mDNS (DNS-SD) discovery, listed peers, and the survey
behind ``followtheleader status``. Feeds the core's :class:`Machine` through the runtime.
"""
