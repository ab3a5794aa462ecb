"""The library's logging: under the ``followtheleader`` logger only, a NullHandler and nothing else.

Every role change is logged at INFO with the term and the leader; repeated trouble is logged
at WARNING once, then at DEBUG. The elector runs in the lab's ``local`` namespace.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import subprocess
import sys
import threading

import pytest

from followtheleader import elect

from conftest import Local

TIMEOUT = 10.0


def test_importing_the_package_configures_no_logging() -> None:
    code = (
        "import json, logging, followtheleader\n"
        "package = logging.getLogger('followtheleader')\n"
        "print(json.dumps({'root': [type(h).__name__ for h in logging.getLogger().handlers],"
        " 'root_level': logging.getLogger().level,"
        " 'package': [type(h).__name__ for h in package.handlers],"
        " 'package_level': package.level, 'propagate': package.propagate}))\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=30, check=True)
    assert json.loads(result.stdout) == {
        "root": [],
        "root_level": logging.WARNING,
        "package": ["NullHandler"],
        "package_level": logging.NOTSET,
        "propagate": True,
    }


class Signal(logging.Handler):
    """Sets an event when a record whose message contains ``text`` arrives at ``level``."""

    def __init__(self, text: str, level: int) -> None:
        super().__init__(logging.DEBUG)
        self.text = text
        self.wanted = level
        self.seen = threading.Event()

    def emit(self, record: logging.LogRecord) -> None:
        if record.levelno == self.wanted and self.text in record.getMessage():
            self.seen.set()


@pytest.mark.lab
def test_role_changes_at_info_with_term_and_leader_and_repeated_trouble_at_debug(
    local: Local, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger="followtheleader")
    root_handlers = list(logging.getLogger().handlers)
    package = logging.getLogger("followtheleader")
    repeated = Signal("malformed heartbeat datagram", logging.DEBUG)
    package.addHandler(repeated)
    group = "log" + os.urandom(3).hex()
    elector = elect(group, node_id="logged", port=0)
    try:
        local(elector.start)
        assert elector.wait_for_leader(TIMEOUT) is not None

        def send_garbage() -> None:
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sender:
                for _ in range(2):
                    sender.sendto(b"not a heartbeat", ("127.0.0.1", elector.port))

        local(send_garbage)
        assert repeated.seen.wait(TIMEOUT), "the second malformed datagram was not logged at DEBUG"
    finally:
        package.removeHandler(repeated)
        assert elector.stop()

    records = [r for r in caplog.records if r.name == "followtheleader" or r.name.startswith("followtheleader.")]
    assert all(r.name.startswith("followtheleader.") for r in records), {r.name for r in records}
    assert [r.getMessage() for r in records if r.levelno == logging.INFO] == [
        f"elector {group!r} node logged started, heartbeat port {elector.port}",
        f"{group} node logged: leader (claimed leadership), term 1, leader logged",
        f"{group} node logged: reelection (stopped), term 1, leader None",
        f"elector {group!r} node logged stopped",
    ]
    trouble = [(r.levelno, r.getMessage()) for r in records if "malformed" in r.getMessage()]
    assert [level for level, _ in trouble] == [logging.WARNING, logging.DEBUG], trouble
    assert not [r for r in records if r.levelno >= logging.WARNING and "malformed" not in r.getMessage()]
    # The library added no handler anywhere, and left the levels alone.
    assert logging.getLogger().handlers == root_handlers
    assert [type(h) for h in package.handlers] == [logging.NullHandler]
