"""Capture a node's ping to ANYONE and replay it at the node (run inside a lab namespace).

python tests/unicast_replay.py GROUP SECRET NODE_HOST NODE_PORT

Listens on UDP 9001 (an address the node lists) and prints ``listening`` once bound, takes
the first datagram the node sends there (its ping to ANYONE), sends that very datagram back to
the node, then a fresh ping to ANYONE of its own (``prober``), and prints the kind of the first
pong for ``prober``: the node handles datagrams from one source in order, so by then it has
handled the replay.
"""

from __future__ import annotations

import os
import socket
import sys
import time

# This checkout's package, as tests/node_runner.py does (not whichever one is installed).
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from followtheleader._core.messages import ANYONE, Message
from followtheleader._core.model import State
from followtheleader._wire.auth import Authenticator, Secret
from followtheleader._wire.protocol import decode_datagram, encode_message


def main() -> int:
    group, secret, host, port = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
    auth = Authenticator([Secret(secret.encode())], group)
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind(("", 9001))
        sock.settimeout(10)
        print("listening", flush=True)
        captured, source = sock.recvfrom(65536)
        sock.sendto(captured, source)  # the node's own ping, back from the address it was sent to
        probe = Message("ping", group, "prober", 0, State.ELECTING, 0)
        sock.sendto(auth.seal(encode_message(probe, auth.next_stamp(time.time(), ANYONE))), (host, port))
        while True:
            data, _ = sock.recvfrom(65536)
            body = auth.open(data)
            decoded = decode_datagram(body) if body is not None else None
            if decoded is not None and decoded[1] is not None and decoded[1].to == "prober":
                print(decoded[0].kind, flush=True)
                return 0


if __name__ == "__main__":
    sys.exit(main())
