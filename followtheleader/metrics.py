"""Prometheus metrics of electors (optional extra: ``pip install 'followtheleader[prometheus]'``).

:class:`ElectorCollector` reads :meth:`.Elector.stats` of the electors it was given at each
scrape (the scraping thread runs it), so nothing is pushed and the electors keep no reference
to prometheus-client. :func:`serve_metrics` serves ``/metrics`` from a thread named
``followtheleader-metrics``; its :meth:`MetricsServer.stop` closes the socket and joins it.

Multiprocess mode (``PROMETHEUS_MULTIPROC_DIR`` set): a collector is not written to the shared
directory, so :func:`track_multiprocess` writes every figure of an elector there (gauges as
``livesum``/``livemostrecent``, counters and the wait histogram, see docs/metrics.rst) at each
event and every second, and :func:`make_registry` adds the ``MultiProcessCollector`` that merges
every process's files.
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Iterable, Iterator
from typing import TYPE_CHECKING, Any

try:
    from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, multiprocess, start_http_server
    from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily
    from prometheus_client.registry import Collector
except ImportError as exc:  # pragma: no cover - depends on the environment
    raise ImportError(
        "followtheleader.metrics needs prometheus-client: pip install 'followtheleader[prometheus]'"
    ) from exc

from ._runtime.stats import WAIT_BUCKETS

if TYPE_CHECKING:
    from prometheus_client.metrics_core import Metric

    from ._elector import Elector

__all__ = ["ElectorCollector", "MetricsServer", "make_registry", "serve_metrics", "track_multiprocess"]

LABELS = ["group", "node"]
log = logging.getLogger(__name__)
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

SYNC_PERIOD = 1.0
"""Seconds between two updates of an elector's multiprocess metrics by its sync thread."""


def _shared_metrics() -> dict[str, Any]:
    """The metrics written to ``PROMETHEUS_MULTIPROC_DIR``, made once per process, with the
    names and labels :class:`ElectorCollector` exposes.

    ``is_leader`` is ``livesum``: a process that died (``mark_process_dead``) drops out, so a
    dead leader's 1 does not linger, and each process's series has its own ``node`` label, so
    the sum over a group counts leaders. ``term`` and ``members`` are ``livemostrecent``: the
    last value set by a live process. Counters and the histogram are summed over every
    process's files, dead ones included (prometheus-client keeps them).
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
            _shared["trouble"] = Counter(
                "followtheleader_trouble", "Dropped datagrams/records and errors by reason", [*LABELS, "reason"]
            )
            _shared["datagrams"] = Counter(
                "followtheleader_heartbeat_datagrams", "Heartbeat datagrams by direction", [*LABELS, "direction"]
            )
            _shared["dropped"] = Counter(
                "followtheleader_heartbeat_dropped", "Heartbeat datagrams dropped by reason", [*LABELS, "reason"]
            )
            _shared["coordinator_errors"] = Counter(
                "followtheleader_coordinator_errors", "Failed coordinator sessions and calls", LABELS
            )
            _shared["wait"] = Histogram(
                "followtheleader_wait_for_leader_seconds",
                "Wait for a leader",
                [*LABELS, "phase"],
                buckets=WAIT_BUCKETS,
            )
        return _shared


class _MultiprocessSync:
    """Writes one elector's figures to the shared metrics: gauges set, counters increased by
    the growth of :meth:`.Elector.stats` since the last update, new waits observed.

    :meth:`update` runs on the elector's callback thread (at each event) and on the
    ``followtheleader-metrics-sync`` thread (every :data:`SYNC_PERIOD` seconds, for counts
    that grow without an event, such as datagrams); a lock makes each update whole.
    """

    def __init__(self, elector: Elector) -> None:
        self._elector = elector
        self._labels = (elector.name, elector.node_id)
        self._metrics = _shared_metrics()
        self._lock = threading.Lock()
        self._seen: dict[tuple[str, str], int] = {}
        self._thread: threading.Thread | None = None
        elector._stats.keep_waits()  # its own figures: read here only

    def on_event(self, event: Any) -> None:
        """Callback thread: update, and start the sync thread at the first event."""
        self.update()
        with self._lock:
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="followtheleader-metrics-sync", daemon=True)
                self._thread.start()

    def _run(self) -> None:
        """Sync thread: update every period until the elector has stopped, then a last time."""
        try:
            while not self._elector.join(SYNC_PERIOD):
                self.update()
            self.update()
        except Exception:
            log.exception("the multiprocess metrics of elector %r stopped updating", self._elector.name)

    def _add(self, key: str, metric: Any, label: str | None, total: int) -> None:
        """Increase ``metric`` by how much ``total`` grew since the last update (a series at 0
        is written too, as the collector shows it). Lock held."""
        child = metric.labels(*self._labels) if label is None else metric.labels(*self._labels, label)
        grown = total - self._seen.get((key, label or ""), 0)
        if grown > 0:
            child.inc(grown)
            self._seen[(key, label or "")] = total

    def update(self) -> None:
        """Any thread: write the elector's current figures."""
        figures: dict[str, Any] = self._elector.stats()
        shared = self._metrics
        with self._lock:
            shared["is_leader"].labels(*self._labels).set(1 if figures["is_leader"] else 0)
            shared["term"].labels(*self._labels).set(figures["term"])
            shared["members"].labels(*self._labels).set(figures["members"])
            for kind, count in figures["leadership_changes"].items():
                self._add("changes", shared["changes"], kind, count)
            for reason, count in figures["counters"].items():
                self._add("trouble", shared["trouble"], reason, count)
            io: dict[str, int] = figures["io"]
            for direction in ("sent", "received"):
                self._add("datagrams", shared["datagrams"], direction, io.get(f"heartbeat-{direction}", 0))
            for reason in DROP_REASONS:
                self._add("dropped", shared["dropped"], reason, figures["counters"].get(reason, 0))
            self._add("coordinator_errors", shared["coordinator_errors"], None, io.get("coordinator-errors", 0))
            for phase, seconds in self._elector._stats.drain_waits():
                shared["wait"].labels(*self._labels, phase).observe(seconds)


def track_multiprocess(elector: Elector) -> None:
    """Multiprocess mode: write every figure of ``elector`` that :class:`ElectorCollector`
    exposes to ``PROMETHEUS_MULTIPROC_DIR``, under the same names and labels, so that the
    ``/metrics`` of any process of the application (a ``MultiProcessCollector``) shows it.

    The elector's callback thread updates them at each event; from its first event on, a
    thread ``followtheleader-metrics-sync`` also updates them every :data:`SYNC_PERIOD`
    seconds (datagram counts grow without events) and ends, after a last update, when the
    elector stops. Like the elector's own threads it is a daemon thread, so an elector left
    running to the ``atexit`` stop does not keep the interpreter from exiting.

    Call it once per elector, before :meth:`.Elector.start`, in the process that runs the
    elector.
    """
    if not os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        raise RuntimeError("track_multiprocess() needs PROMETHEUS_MULTIPROC_DIR (prometheus-client multiprocess mode)")
    sync = _MultiprocessSync(elector)
    for kind in ("leader", "follower", "reelection", "error"):
        elector.on(kind, sync.on_event)
