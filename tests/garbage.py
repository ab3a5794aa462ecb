"""Send garbage at a group (run inside a lab namespace): datagrams and malformed DNS-SD records.

python tests/garbage.py GROUP '["198.18.0.1", ...]'
"""

from __future__ import annotations

import json
import random
import socket
import sys

from zeroconf import ServiceInfo, Zeroconf


def garbage_datagrams(group: str) -> list[bytes]:
    rng = random.Random(5)
    # Version 1 is an older protocol: as garbage as the rest to a node of version 2.
    valid = {"v": 1, "k": "claim", "g": group, "id": "zz", "p": 0, "r": "leader", "t": 99, "mv": 0, "l": "zz"}
    wrong_fields = [
        {**valid, "t": -1},
        {**valid, "t": "99"},
        {**valid, "p": 2**40},
        {**valid, "k": "takeover"},
        {**valid, "r": "king"},
        {**valid, "id": "has space"},
        {**valid, "m": [["x", 0, "not-an-ip", 1]]},
        {**valid, "m": "lots"},
        {**valid, "lm": [1, 2, 3]},
        {**valid, "v": 99},
        {**valid, "a": ["short", 1, 1.0]},
    ]
    datagrams = [b"", b"{", b"PONG", b"\x00" * 10, b"{}" * 5000, b"x" * 20000, b'{"v":1}', b"[1,2,3]"]
    datagrams += [json.dumps(body).encode() for body in wrong_fields]
    datagrams += [bytes(rng.randrange(256) for _ in range(rng.randrange(1, 1400))) for _ in range(20)]
    return datagrams


def main() -> int:
    group, targets = sys.argv[1], json.loads(sys.argv[2])
    datagrams = garbage_datagrams(group)
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        for target in targets:
            for data in datagrams:
                sock.sendto(data, (target, 9001))
                sock.sendto(data[:1400] or b"\x00", (target, 5353))
        for data in datagrams[:10]:
            sock.sendto(data[:1400] or b"\x00", ("224.0.0.251", 5353))
    zc = Zeroconf()
    try:
        broken = [
            {"v": "1", "g": group, "id": "bad id!", "p": "0", "r": "leader", "t": "1", "hp": "9001"},
            {"v": "1", "g": group, "id": "junk", "p": "zero", "r": "leader", "t": "1", "hp": "9001"},
            {"v": "1", "g": group, "id": "junk2", "p": "0", "r": "leader", "t": "-5", "hp": "70000"},
        ]
        infos = []
        for index, properties in enumerate(broken):
            info = ServiceInfo(
                "_ftl._udp.local.",
                f"junk-{index}._ftl._udp.local.",
                port=9,
                properties=properties,
                server=f"junk-{index}.local.",
                parsed_addresses=["198.18.200.1"],
            )
            zc.register_service(info, cooperating_responders=True)
            infos.append(info)
    finally:
        zc.close()
    print("sent", len(datagrams), "datagrams to each of", len(targets), "hosts and", len(broken), "records")
    return 0


if __name__ == "__main__":
    sys.exit(main())
