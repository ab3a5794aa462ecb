"""The runtime: the threads that feed a state machine and run the user's callbacks.

The ticker thread (the machine's clock), the callback thread, and logging helpers shared by
every thread. Depends on the core; knows nothing of the network.
"""
