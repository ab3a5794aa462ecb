"""The etcd watch stream: parsing the gateway's messages, and :class:`GroupWatch` against a
fake gateway on loopback (a unit test of the stream handling; the lab tests run real etcd)."""

from __future__ import annotations

import base64
import json
import threading
import time
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest

pytest.importorskip("etcd3gw")

from followtheleader._coordinators.base import CoordinatorError, parse_coordinator
from followtheleader._coordinators.etcd import EtcdCoordinator, GroupWatch, parse_watch_message
from followtheleader._core.model import Member


def _b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode()


def _kv(key: str, revision: int) -> dict[str, Any]:
    return {"key": _b64(key), "create_revision": str(revision), "mod_revision": str(revision), "value": ""}


def test_parse_created_put_delete_and_compacted() -> None:
    created = parse_watch_message(b'{"result":{"header":{"revision":"7"},"created":true}}')
    assert (created.revision, created.created, created.ended, created.events) == (7, True, False, [])
    put, gone = _kv("/p/g/members/a.1", 8), _kv("/p/g/leader", 5)
    events = [{"kv": put}, {"type": "DELETE", "kv": gone}]
    line = json.dumps({"result": {"header": {"revision": "9"}, "events": events}})
    message = parse_watch_message(line)
    assert message.revision == 9 and message.events == [(False, put), (True, gone)]
    compacted = parse_watch_message(b'{"result":{"header":{"revision":"9"},"compact_revision":"3","canceled":true}}')
    assert compacted.ended


@pytest.mark.parametrize(
    ("line", "message"),
    [
        (b'{"error":{"grpc_code":14,"message":"etcdserver: no leader"}}', "no leader"),
        (b"<html>bad gateway</html>", "not JSON"),
        (b"[1, 2]", "unexpected message"),
        (b'{"result":{"events":[{"type":"PUT"}]}}', "unexpected event"),
    ],
)
def test_parse_refuses_errors_and_garbage(line: bytes, message: str) -> None:
    with pytest.raises(CoordinatorError, match=message):
        parse_watch_message(line)


class FakeGateway:
    """A loopback HTTP server that answers ``/v3/kv/range`` and streams ``/v3/watch``: each
    watch request gets the messages the test puts in :meth:`send` (chunked), until
    :meth:`end_stream` or the client goes."""

    def __init__(self) -> None:
        self.kvs = [_kv("/p/g/members/a.1", 2)]
        self.revision = 2
        self.ranges = 0
        self.watches = 0
        self._lock = threading.Condition()
        self._queue: list[bytes | None] = []
        gateway = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: Any) -> None:
                pass

            def do_POST(self) -> None:
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                if self.path == "/v3/kv/range":
                    with gateway._lock:
                        gateway.ranges += 1
                        reply = {"header": {"revision": str(gateway.revision)}, "kvs": gateway.kvs}
                    data = json.dumps(reply).encode()
                    self.send_response(200)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(data)))
                    self.end_headers()
                    self.wfile.write(data)
                    return
                assert self.path == "/v3/watch" and "create_request" in body
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Transfer-Encoding", "chunked")
                self.end_headers()
                with gateway._lock:
                    gateway.watches += 1
                    gateway._queue.clear()
                    gateway._lock.notify_all()
                self._chunk(json.dumps({"result": {"header": {"revision": str(gateway.revision)}, "created": True}}))
                while True:
                    with gateway._lock:
                        while not gateway._queue:
                            gateway._lock.wait()
                        item = gateway._queue.pop(0)
                    if item is None:
                        self.wfile.write(b"0\r\n\r\n")
                        self.close_connection = True
                        return
                    try:
                        self._chunk(item.decode())
                    except OSError:
                        return

            def _chunk(self, text: str) -> None:
                data = (text + "\n").encode()
                self.wfile.write(b"%x\r\n%s\r\n" % (len(data), data))
                self.wfile.flush()

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    @property
    def port(self) -> int:
        return int(self.server.server_address[1])

    def send(self, message: dict[str, Any]) -> None:
        with self._lock:
            self._queue.append(json.dumps(message).encode())
            self._lock.notify_all()

    def end_stream(self) -> None:
        with self._lock:
            self._queue.append(None)
            self._lock.notify_all()

    def close(self) -> None:
        self.end_stream()
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def gateway() -> Iterator[FakeGateway]:
    fake = FakeGateway()
    yield fake
    fake.close()


def _wait(predicate: Callable[[], Any], what: str, timeout: float = 5.0) -> Any:
    deadline = time.monotonic() + timeout
    woken = threading.Event()
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        woken.wait(0.01)
    raise AssertionError(f"timed out waiting for {what}")


def _keys(watch: GroupWatch) -> set[str] | None:
    current = watch.current()
    return None if current is None else {base64.b64decode(kv["key"]).decode() for kv in current[1]}


def test_group_watch_follows_the_stream_reads_again_after_a_break_and_stops(gateway: FakeGateway) -> None:
    config = parse_coordinator(f"etcd://127.0.0.1:{gateway.port}/p?api_path=/v3/")
    owner = EtcdCoordinator(config, "g", Member("a", 1), 10.0)
    owner.connect_only()
    changes = threading.Semaphore(0)
    watch = GroupWatch(owner, "/p/g/", changes.release)
    watch.start()
    try:
        assert _wait(lambda: _keys(watch) == {"/p/g/members/a.1"}, "the first full read")
        leader = _kv("/p/g/leader", 3)
        gateway.send({"result": {"header": {"revision": "3"}, "events": [{"type": "PUT", "kv": leader}]}})
        _wait(lambda: _keys(watch) == {"/p/g/members/a.1", "/p/g/leader"}, "the put")
        assert _wait(lambda: watch.current(), "a view")[0] == 3
        gateway.send({"result": {"header": {"revision": "4"}, "events": [{"type": "DELETE", "kv": leader}]}})
        _wait(lambda: _keys(watch) == {"/p/g/members/a.1"}, "the delete")
        assert changes.acquire(timeout=1)  # the session thread was woken

        gateway.end_stream()  # the stream breaks: a full read, then a new stream
        _wait(lambda: gateway.watches == 2 and gateway.ranges == 2 and watch.current() is not None, "a new stream")

        started = time.monotonic()
        watch.stop()  # while the stream is open and idle
        assert time.monotonic() - started < 2.0
        assert not any(t.name == "followtheleader-watch-g" for t in threading.enumerate())
        assert watch.current() is None
    finally:
        watch.stop()
        owner.close()


class _StubWatch:
    """Stands for a :class:`GroupWatch` whose view is at ``revision`` (no thread, no stream)."""

    def __init__(self, revision: int, kvs: list[dict[str, Any]]) -> None:
        self.revision, self.kvs = revision, kvs

    def current(self) -> tuple[int, list[dict[str, Any]]]:
        return self.revision, list(self.kvs)


def test_watched_view_applies_own_writes_the_watch_has_not_seen_yet() -> None:
    """A claim, then a release, acknowledged at revisions the watch has not reached: the
    watched view shows them at once (no read needed), in order; once the watch reaches a
    write's revision, the watch's own view is taken as is."""
    config = parse_coordinator("etcd://127.0.0.1:1/p")
    me = EtcdCoordinator(config, "g", Member("a", 1), 10.0)
    me._lease_id = 7
    other = _kv("/p/g/members/b.1", 2)
    mine = {**_kv("/p/g/members/a.1", 3), "lease": "7"}
    watch = _StubWatch(3, [other, mine])
    me._watch = watch  # type: ignore[assignment]
    header = {"header": {"revision": "5"}, "succeeded": True}

    me._note_written(
        header,
        changes={
            _b64("/p/g/leader"): {
                **_kv("/p/g/leader", 5),
                "value": _b64('{"node_id": "a", "priority": 1}'),
                "lease": "7",
            }
        },
    )
    view = me.watched_view()
    assert view is not None and view.leadership is not None
    assert (view.leadership.leader.node_id, view.leadership.term, view.leadership.mine) == ("a", 5, True)
    assert {m.node_id for m in view.members} == {"a", "b"}

    me._note_written({"header": {"revision": "6"}}, changes={_b64("/p/g/members/a.1"): None, _b64("/p/g/leader"): None})
    view = me.watched_view()
    assert view is not None and view.leadership is None and [m.node_id for m in view.members] == ["b"]

    watch.revision, watch.kvs = 6, [other]  # the watch caught up: its view, as is
    assert me.watched_view() == view and me._wrote == []

    me._note_written({"header": {"revision": "7"}})  # a write whose effect is not known
    assert me.watched_view() is None
    watch.revision = 7
    assert me.watched_view() is not None
