"""A tiny DNS server of the tests' own, on a lab host's address (dnslib for the wire format).

It answers A queries for the names the test sets, from a table the test changes while nodes
run (a Kubernetes headless Service whose replicas come and go); AAAA queries for those names
get an empty answer, other names NXDOMAIN. Node processes use it when their host has
``host.set_resolver(server.address)``.

Threads: ``dns-<host>`` serves (it lives in the host's namespace, as its socket does).
"""

from __future__ import annotations

import socket
import threading

from dnslib import QTYPE, RCODE, RR, A, DNSRecord

from netlab import Host


class DnsServer:
    """Serves ``records`` (name -> IPv4 addresses) on ``host.address:53``, UDP."""

    def __init__(self, host: Host) -> None:
        self.host = host
        self.address = host.address
        self._records: dict[str, list[str]] = {}
        self._lock = threading.Lock()
        self._stopping = threading.Event()
        self._socket: socket.socket | None = None
        self._thread: threading.Thread | None = None
        self.queries = 0

    def set(self, name: str, addresses: list[str] | None) -> None:
        """Make ``name`` resolve to ``addresses`` (None: the name does not exist)."""
        with self._lock:
            if addresses is None:
                self._records.pop(name.rstrip(".").lower(), None)
            else:
                self._records[name.rstrip(".").lower()] = list(addresses)

    def start(self) -> DnsServer:
        def open_in_namespace() -> None:
            self._socket = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            self._socket.bind((self.address, 53))
            self._socket.settimeout(0.1)  # how soon close() is noticed
            self._thread = threading.Thread(target=self._serve, name=f"dns-{self.host.name}", daemon=True)
            self._thread.start()

        self.host.call_in_namespace(open_in_namespace, timeout=10)
        return self

    def close(self) -> None:
        self._stopping.set()
        if self._thread is not None:
            self._thread.join(5)
        if self._socket is not None:
            self._socket.close()

    def __enter__(self) -> DnsServer:  # noqa: PYI034 - not subclassed
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def _serve(self) -> None:
        assert self._socket is not None
        while not self._stopping.is_set():
            try:
                data, source = self._socket.recvfrom(4096)
            except TimeoutError:
                continue
            except OSError:
                return
            try:
                reply = self._answer(DNSRecord.parse(data))
            except Exception:  # noqa: BLE001 - a malformed query gets no answer
                continue
            self._socket.sendto(reply.pack(), source)

    def _answer(self, query: DNSRecord) -> DNSRecord:
        reply = query.reply()
        name = str(query.q.qname).rstrip(".").lower()
        with self._lock:
            self.queries += 1
            addresses = self._records.get(name)
        if addresses is None:
            reply.header.rcode = RCODE.NXDOMAIN
        elif query.q.qtype == QTYPE.A:  # AAAA and others: an empty answer (no IPv6 in the lab)
            for address in addresses:
                reply.add_answer(RR(query.q.qname, QTYPE.A, rdata=A(address), ttl=0))
        return reply
