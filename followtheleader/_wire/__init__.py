"""The wire: heartbeat datagrams and DNS-SD TXT records as bytes, and their authentication.

Pure functions and small stateful checkers (replay windows); no sockets. Depends only on the
core's value types.
"""
