"""The pure core: what a node knows and decides, with no I/O and no clock.

Rules for everything in this package (``tests/test_code_health.py`` checks the first three):

* It imports nothing that does I/O, starts threads or reads a clock: no ``socket``,
  ``select``, ``threading``, ``time``, ``zeroconf``, no client library; and nothing from the
  other layers of the package (wire, runtime, LAN, coordinators, CLI), which all import it.
* Time is an argument: every input takes ``now`` (``time.monotonic()`` read by the caller),
  so unit tests drive the machines with a fake clock.
* Inputs go in as method calls, decisions come out as return values (actions, events); the
  machines send nothing and call no callback themselves.
* The machines are not thread-safe: the runtime serialises every call under one lock.
"""
