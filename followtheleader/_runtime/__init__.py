"""The runtime: the threads that feed a state machine and run the user's callbacks.

The ticker thread (the machine's clock), the callback thread, logging helpers shared by
every thread, and the seam between the facade and a backend (:mod:`.backend`). Depends on
the core; knows nothing of the network.
"""
