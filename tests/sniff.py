"""Capture UDP payloads on a lab host's interface (run inside its namespace, as root).

    python tests/sniff.py INTERFACE SRC_PORT SECONDS [--until-eof]

Prints one JSON line per captured datagram sent from SRC_PORT: {"t": <monotonic time>,
"dport": ..., "hex": ...}, then {"done": N}. Used by the replay tests: an attacker who can
see the traffic. Captures for SECONDS; with ``--until-eof``, also stops as soon as its stdin
is closed (SECONDS is then a deadline only), so that the capture can end when the test has
seen what it waits for.
"""

from __future__ import annotations

import json
import select
import socket
import struct
import sys
import time

ETH_P_IP = 0x0800


def main() -> int:
    interface, source_port, seconds = sys.argv[1], int(sys.argv[2]), float(sys.argv[3])
    until_eof = sys.argv[4:] == ["--until-eof"]
    sniffer = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(ETH_P_IP))
    sniffer.bind((interface, 0))
    deadline = time.monotonic() + seconds
    count = 0
    print(json.dumps({"listening": interface}), flush=True)
    while (remaining := deadline - time.monotonic()) > 0:
        readable, _, _ = select.select([sniffer, sys.stdin] if until_eof else [sniffer], [], [], remaining)
        if sys.stdin in readable and not sys.stdin.readline():
            break  # stdin closed: the test has what it waits for
        if sniffer not in readable:
            continue
        frame = sniffer.recv(65535)
        packet = frame[14:]
        if len(packet) < 28 or packet[9] != socket.IPPROTO_UDP:
            continue
        header_length = (packet[0] & 0x0F) * 4
        sport, dport, _length, _checksum = struct.unpack("!HHHH", packet[header_length : header_length + 8])
        if sport != source_port:
            continue
        record = {"t": time.monotonic(), "dport": dport, "hex": packet[header_length + 8 :].hex()}
        print(json.dumps(record), flush=True)
        count += 1
    print(json.dumps({"done": count}), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
