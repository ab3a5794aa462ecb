"""Prometheus metrics of electors (optional extra: ``pip install 'followtheleader[prometheus]'``).

:class:`ElectorCollector` reads :meth:`.Elector.stats` of the electors it was given at each
scrape (the scraping thread runs it), so nothing is pushed and the electors keep no reference
to prometheus-client. :func:`serve_metrics` serves ``/metrics`` from a thread named
``followtheleader-metrics``; its :meth:`MetricsServer.stop` closes the socket and joins it.

Multiprocess mode (``PROMETHEUS_MULTIPROC_DIR`` set): a collector is not written to the shared
directory, so :func:`track_multiprocess` writes an elector's gauges (``livesum`` and
``livemostrecent``, see docs/metrics.rst) and leadership changes there at each event, and
:func:`make_registry` adds the ``MultiProcessCollector`` that merges every process's files.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Iterable, Iterator
from typing import TYPE_CHECKING, Any

try:
    from prometheus_client import CollectorRegistry, Counter, Gauge, multiprocess, start_http_server
    from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily
    from prometheus_client.registry import Collector
except ImportError as exc:  # pragma: no cover - depends on the environment
    raise ImportError(
        "followtheleader.metrics needs prometheus-client: pip install 'followtheleader[prometheus]'"
    ) from exc

if TYPE_CHECKING:
    from prometheus_client.metrics_core import Metric

    from ._elector import Elector

__all__ = ["ElectorCollector", "MetricsServer", "make_registry", "serve_metrics", "track_multiprocess"]

LABELS = ["group", "node"]
DROP_REASONS = ("unauthenticated", "replayed", "bad-datagram")
"""The reasons a heartbeat datagram is dropped (keys of :attr:`.Elector.counters`)."""


class ElectorCollector(Collector):
    """A collector of the given electors' figures (``group``/``node`` labelled)."""

    def __init__(self, electors: Iterable[Elector]) -> None:
        self._electors = list(electors)

    def collect(self) -> Iterator[Metric]:
        """Scraping thread: one family per figure, one series per elector."""
        is_leader = GaugeMetricFamily("followtheleader_is_leader", "1 while this node leads", labels=LABELS)
        term = GaugeMetricFamily("followtheleader_term", "Term led or followed", labels=LABELS)
        members = GaugeMetricFamily("followtheleader_members", "Live members known", labels=LABELS)
        changes = CounterMetricFamily(
            "followtheleader_leadership_changes", "Leadership events by kind", labels=[*LABELS, "kind"]
        )
        trouble = CounterMetricFamily(
            "followtheleader_trouble", "Dropped datagrams/records and errors by reason", labels=[*LABELS, "reason"]
        )
        datagrams = CounterMetricFamily(
            "followtheleader_heartbeat_datagrams", "Heartbeat datagrams by direction", labels=[*LABELS, "direction"]
        )
        dropped = CounterMetricFamily(
            "followtheleader_heartbeat_dropped", "Heartbeat datagrams dropped by reason", labels=[*LABELS, "reason"]
        )
        coordinator_errors = CounterMetricFamily(
            "followtheleader_coordinator_errors", "Failed coordinator sessions and calls", labels=LABELS
        )
        wait = HistogramMetricFamily(
            "followtheleader_wait_for_leader_seconds", "Wait for a leader", labels=[*LABELS, "phase"]
        )
        for elector in self._electors:
            figures: dict[str, Any] = elector.stats()
            labels = [elector.name, elector.node_id]
            is_leader.add_metric(labels, 1.0 if figures["is_leader"] else 0.0)
            term.add_metric(labels, float(figures["term"]))
            members.add_metric(labels, float(figures["members"]))
            for kind, count in sorted(figures["leadership_changes"].items()):
                changes.add_metric([*labels, kind], float(count))
            for reason, count in sorted(figures["counters"].items()):
                trouble.add_metric([*labels, reason], float(count))
            io: dict[str, int] = figures["io"]
            for direction in ("sent", "received"):
                datagrams.add_metric([*labels, direction], float(io.get(f"heartbeat-{direction}", 0)))
            for reason in DROP_REASONS:
                dropped.add_metric([*labels, reason], float(figures["counters"].get(reason, 0)))
            coordinator_errors.add_metric(labels, float(io.get("coordinator-errors", 0)))
            for phase, hist in figures["wait_for_leader"].items():
                buckets = [(str(bound), float(n)) for bound, n in hist["buckets"].items()]
                buckets.append(("+Inf", float(hist["count"])))
                wait.add_metric([*labels, phase], buckets, hist["sum"])
        yield from (is_leader, term, members, changes, trouble, datagrams, dropped, coordinator_errors, wait)


class MetricsServer:
    """A running ``/metrics`` server; :meth:`stop` closes it and joins its thread."""

    def __init__(self, server: Any, thread: threading.Thread) -> None:
        self._server = server
        self._thread = thread

    @property
    def port(self) -> int:
        return int(self._server.server_address[1])

    def stop(self, timeout: float = 5.0) -> None:
        """Any thread: stop serving, close the socket, join the thread."""
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout)


def make_registry(electors: Iterable[Elector]) -> CollectorRegistry:
    """A registry of the electors' collector, plus the merged multiprocess files when
    ``PROMETHEUS_MULTIPROC_DIR`` is set."""
    registry = CollectorRegistry()
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        multiprocess.MultiProcessCollector(registry)  # type: ignore[no-untyped-call]
    registry.register(ElectorCollector(electors))
    return registry


def serve_metrics(electors: Iterable[Elector], port: int, address: str = "127.0.0.1") -> MetricsServer:
    """Serve the electors' metrics on ``http://address:port/metrics`` (port 0: any free one).

    :raises OSError: when the port cannot be bound.
    """
    server, thread = start_http_server(port, address, registry=make_registry(electors))
    thread.name = "followtheleader-metrics"
    return MetricsServer(server, thread)


_shared: dict[str, Any] = {}
_shared_lock = threading.Lock()


def _shared_metrics() -> dict[str, Any]:
    """The metrics written to ``PROMETHEUS_MULTIPROC_DIR``, made once per process.

    ``is_leader`` is ``livesum``: a process that died (``mark_process_dead``) drops out, so a
    dead leader's 1 does not linger, and each process's series has its own ``node`` label, so
    the sum over a group counts leaders. ``term`` and ``members`` are ``livemostrecent``: the
    last value set by a live process.
    """
    with _shared_lock:
        if not _shared:
            _shared["is_leader"] = Gauge(
                "followtheleader_is_leader", "1 while this node leads", LABELS, multiprocess_mode="livesum"
            )
            _shared["term"] = Gauge(
                "followtheleader_term", "Term led or followed", LABELS, multiprocess_mode="livemostrecent"
            )
            _shared["members"] = Gauge(
                "followtheleader_members", "Live members known", LABELS, multiprocess_mode="livemostrecent"
            )
            _shared["changes"] = Counter(
                "followtheleader_leadership_changes", "Leadership events by kind", [*LABELS, "kind"]
            )
        return _shared


def track_multiprocess(elector: Elector) -> None:
    """Multiprocess mode: write ``elector``'s gauges and leadership changes to
    ``PROMETHEUS_MULTIPROC_DIR`` at each of its events (its callback thread does), so that the
    ``/metrics`` of any process of the application (a ``MultiProcessCollector``) shows it.

    Call it before :meth:`.Elector.start`, in the process that runs the elector.
    """
    if not os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        raise RuntimeError("track_multiprocess() needs PROMETHEUS_MULTIPROC_DIR (prometheus-client multiprocess mode)")
    shared = _shared_metrics()
    labels = (elector.name, elector.node_id)

    def on_event(event: Any) -> None:
        shared["changes"].labels(*labels, event.kind).inc()
        figures = elector.stats()
        shared["is_leader"].labels(*labels).set(1 if figures["is_leader"] else 0)
        shared["term"].labels(*labels).set(figures["term"])
        shared["members"].labels(*labels).set(figures["members"])

    for kind in ("leader", "follower", "reelection", "error"):
        elector.on(kind, on_event)
