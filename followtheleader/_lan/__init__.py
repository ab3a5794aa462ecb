"""LAN I/O: the LAN backend (:mod:`.backend`: heartbeat socket, mDNS (DNS-SD) discovery or
listed peers, with its settings in :mod:`.settings`), and the survey behind
``followtheleader status``. Feeds the core's :class:`Machine` through the runtime's seam.
"""
