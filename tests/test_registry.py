"""The registry of coordinator drivers: built-in schemes, third-party ones through an entry
point, and the errors for the others. No server, no root."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import textwrap
import urllib.parse
from pathlib import Path

import pytest

from followtheleader import Elector, State, elect
from followtheleader._coordinators.base import make_coordinator, parse_coordinator
from followtheleader._coordinators.registry import BUILTIN, ENTRY_POINT_GROUP, Driver, driver_for, drivers
from followtheleader._core.model import Member

ROOT = Path(__file__).resolve().parent.parent


def test_the_builtin_drivers() -> None:
    assert set(BUILTIN) == {
        "zookeeper",
        "zookeepers",
        "etcd",
        "etcds",
        "postgresql",
        "postgres",
        "redis",
        "rediss",
        "unix",
        "redis+sentinel",
        "memory",
    }
    zookeeper, etcds, memory = BUILTIN["zookeeper"], BUILTIN["etcds"], BUILTIN["memory"]
    assert (zookeeper.default_port, zookeeper.library, zookeeper.extra) == (2181, "kazoo", "zookeeper")
    assert not zookeeper.tls and zookeeper.backend == "zookeeper"
    assert zookeeper.target == "followtheleader._coordinators.zookeeper:ZooKeeperCoordinator"
    assert BUILTIN["zookeepers"].backend == "zookeeper" and BUILTIN["zookeepers"].tls
    assert (etcds.default_port, etcds.library, etcds.extra, etcds.backend) == (2379, "etcd3gw", "etcd", "etcd")
    assert etcds.tls
    assert "sasl" in zookeeper.query and "cert" in etcds.query and "sasl" not in etcds.query
    assert memory.library is None and memory.extra is None and memory.query == frozenset()
    assert memory.target == "followtheleader._coordinators.memory:MemoryCoordinator"
    assert drivers().keys() >= BUILTIN.keys()
    postgres, unix = BUILTIN["postgres"], BUILTIN["unix"]
    assert (postgres.backend, postgres.library, postgres.extra, postgres.path) == (
        "postgresql",
        "psycopg",
        "postgresql",
        "database",
    )
    assert (unix.backend, unix.library, unix.path) == ("redis", "redis", "socket")
    assert BUILTIN["rediss"].tls and BUILTIN["rediss"].backend == "redis"
    sentinel = BUILTIN["redis+sentinel"]
    assert (sentinel.backend, sentinel.default_port, sentinel.path, sentinel.tls) == ("redis", 26379, "database", False)


def test_what_a_url_path_names() -> None:
    assert parse_coordinator("etcd://h/x/y").prefix == "/x/y"
    database = parse_coordinator("postgresql://u:pw@h/app%20db?sslmode=disable")
    assert (database.path, database.prefix, database.hosts) == ("app db", "/followtheleader", (("h", 5432),))
    assert parse_coordinator("redis://h:7000/3").path == "3"
    local = parse_coordinator("postgresql://app@%2Fvar%2Frun%2Fpostgresql/app")
    assert (local.hosts, local.path) == ((("%2Fvar%2Frun%2Fpostgresql", 5432),), "app")  # a socket directory
    assert (local.username, local.password, local.url) == (
        "app",
        None,
        "postgresql://app@%2Fvar%2Frun%2Fpostgresql/app",
    )
    with pytest.raises(ValueError, match="credentials must be given"):
        parse_coordinator("postgresql://:pw@h/app")
    sentinels = parse_coordinator("redis+sentinel://u:pw@s1,s2:26380/my%20master/2?prefix=/p")
    assert sentinels.hosts == (("s1", 26379), ("s2", 26380))
    assert (sentinels.path, sentinels.backend, sentinels.scheme) == ("my master/2", "redis", "redis+sentinel")
    assert (sentinels.username, sentinels.password, sentinels.setting("prefix")) == ("u", "pw", "/p")
    socket = parse_coordinator("unix:///run/redis/redis.sock?db=2")
    assert (socket.hosts, socket.path, socket.backend) == ((), "/run/redis/redis.sock", "redis")
    with pytest.raises(ValueError, match="names a socket"):
        parse_coordinator("unix://host/run/redis.sock")
    with pytest.raises(ValueError, match="no socket path"):
        parse_coordinator("unix://")
    with pytest.raises(ValueError, match="path must be"):
        Driver("x", "m:C", path="file")


def test_reading_the_registry_imports_no_driver_and_no_client_library() -> None:
    code = (
        "import sys\n"
        "from followtheleader._coordinators.base import parse_coordinator\n"
        "parse_coordinator('zookeeper://h1'); parse_coordinator('etcd://h1'); parse_coordinator('memory://m')\n"
        "loaded = [m for m in ('kazoo', 'etcd3gw', 'requests') if m in sys.modules]\n"
        "loaded += [m for m in sys.modules if m.startswith('followtheleader._coordinators.')\n"
        "           and m.rpartition('.')[2] in ('zookeeper', 'etcd', 'memory')]\n"
        "print(sorted(loaded))\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=60, env=_env(ROOT)
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"


@pytest.mark.parametrize("url", ["zk://h:2181", "ZK://h", "consul://h:8500"])
def test_an_unknown_scheme_lists_the_known_ones(url: str) -> None:
    with pytest.raises(ValueError, match="option 'coordinator'") as raised:
        elect("g", coordinator=url)
    text = str(raised.value)
    assert f"unknown scheme {url.partition('://')[0].lower()!r}" in text
    known = "etcd, etcds, memory, postgres, postgresql, redis, redis+sentinel, rediss, unix, zookeeper, zookeepers"
    assert f"use one of {known}" in text
    with pytest.raises(ValueError, match="unknown scheme"):
        driver_for("zk")


def test_a_scheme_is_served_by_its_own_driver() -> None:
    """No scheme falls through to another driver (a third scheme once became etcd)."""
    config = parse_coordinator("memory://here/some/prefix")
    assert (config.backend, config.scheme, config.prefix) == ("memory", "memory", "/some/prefix")
    assert config.hosts == (("here", 0),)
    coordinator = make_coordinator(config, "g", Member("a"), 5.0)
    assert type(coordinator).__name__ == "MemoryCoordinator" and coordinator.service == "memory"
    with pytest.raises(ValueError, match="unknown setting"):
        parse_coordinator("memory://here?ca=x")
    with pytest.raises(ValueError, match="no users"):
        parse_coordinator("memory://u:p@here")
    for url in ("memory://a,b", "memory://here:5"):  # one store, named once
        with pytest.raises(ValueError, match="names one store, without a port"):
            parse_coordinator(url)


def test_a_driver_description_is_checked() -> None:
    with pytest.raises(ValueError, match="scheme"):
        Driver("Bad Scheme", "m:C")
    with pytest.raises(ValueError, match="module:Class"):
        Driver("good", "no-colon")
    assert Driver("good", "pkg.mod:Cls").backend == "good"


# ----------------------------------------------------------------- a third-party driver

_DRIVER_MODULE = """
from followtheleader._coordinators.registry import Driver

FAKE = Driver("fake", "ftl_fake_impl:FakeCoordinator", default_port=7000, library="ftl_fake_impl",
              extra="ftl-fake", query=frozenset({"colour"}))
NOT_A_DRIVER = "something else"
"""

_IMPLEMENTATION = """
from followtheleader._coordinators.memory import MemoryCoordinator

class FakeCoordinator(MemoryCoordinator):
    service = "fake service"
"""


def _install_plugin(where: Path) -> None:
    """A tiny installed distribution: its module, and a dist-info with the entry points."""
    (where / "ftl_fake_driver.py").write_text(textwrap.dedent(_DRIVER_MODULE))
    (where / "ftl_fake_impl.py").write_text(textwrap.dedent(_IMPLEMENTATION))
    info = where / "ftl_fake-1.0.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: ftl-fake\nVersion: 1.0\n")
    (info / "entry_points.txt").write_text(
        f"[{ENTRY_POINT_GROUP}]\n"
        "fake = ftl_fake_driver:FAKE\n"
        "wrong = ftl_fake_driver:NOT_A_DRIVER\n"
        "broken = ftl_no_such_module:THING\n"
        "memory = ftl_fake_driver:FAKE\n"
    )


def test_a_third_party_driver_registers_through_an_entry_point(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    _install_plugin(tmp_path)
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(sys.modules, "ftl_fake_impl", raising=False)
    with caplog.at_level(logging.WARNING, "followtheleader._coordinators.registry"):
        known = drivers()
    assert known["fake"].target == "ftl_fake_impl:FakeCoordinator"
    assert "wrong" not in known and "broken" not in known
    assert known["memory"] is BUILTIN["memory"]  # a built-in scheme is not taken over
    assert {"wrong", "broken", "memory"} <= {word.strip("'") for r in caplog.records for word in r.getMessage().split()}
    with pytest.raises(
        ValueError,
        match=r"unknown scheme 'zk'; use one of etcd, etcds, fake, memory, postgres, postgresql, redis, "
        r"redis\+sentinel, rediss, unix",
    ):
        parse_coordinator("zk://h")

    config = parse_coordinator("fake://box/p?colour=red")
    assert (config.backend, config.hosts, config.setting("colour")) == ("fake", (("box", 7000),), "red")
    assert "ftl_fake_impl" not in sys.modules  # checked to be there, not imported, by the parser
    with pytest.raises(ValueError, match="unknown setting"):
        parse_coordinator("fake://box?size=2")

    elector = elect("g", coordinator="fake://box", coordinator_ttl=2)
    assert type(elector) is Elector and elector.describe().service == "fake service"
    with elector:
        leader = elector.wait_for_leader(10)
        assert leader is not None and leader.node_id == elector.node_id and elector.state is State.LEADER
        assert elector.is_leader and repr(elector).endswith("(fake service)>")


def test_a_registered_driver_without_its_library_names_it(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _install_plugin(tmp_path)
    (tmp_path / "ftl_fake_impl.py").unlink()
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(sys.modules, "ftl_fake_impl", raising=False)
    with pytest.raises(ValueError, match=r"fake needs the ftl_fake_impl package; install ftl-fake"):
        parse_coordinator("fake://box")


def _env(root: Path) -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(root), env.get("PYTHONPATH", "")) if p)
    return env


@pytest.mark.parametrize("password", ["a/b", "a%2Fb", "p@ss:w?rd#1", "%41", "x"])
def test_the_shown_url_never_contains_the_password(password: str) -> None:
    written = urllib.parse.quote(password, safe="")
    for url in (
        f"postgresql://me:{written}@h/db?sslmode=require",
        f"redis://me:{written}@h:6379/0",
        f"redis+sentinel://me:{written}@s1,s2/mymaster/0",
    ):
        config = parse_coordinator(url)
        assert config.password == password
        assert written not in config.url and password not in config.url, config.url
        assert config.url == url.replace(f":{written}@", ":***@")


@pytest.mark.parametrize("url", ["redis://u:1234/abc@h:6379/0", "redis://u:pa/ss@h/0", "redis://u:p?ss@h/0"])
def test_a_password_with_a_raw_slash_or_question_mark_is_refused_without_showing_it(url: str) -> None:
    with pytest.raises(ValueError, match="must be percent-encoded") as refused:
        parse_coordinator(url)
    assert "ss@" not in str(refused.value) and "abc@" not in str(refused.value)


def test_a_string_that_is_no_url_is_refused_without_its_credentials() -> None:
    with pytest.raises(ValueError, match="must be a URL") as refused:
        parse_coordinator("me:s3cret@db:5432")
    assert "s3cret" not in str(refused.value)


def test_redis_takes_a_password_without_a_user() -> None:
    config = parse_coordinator("redis://:s3cret@h:6379/0")
    assert (config.username, config.password, config.url) == (None, "s3cret", "redis://:***@h:6379/0")
    with pytest.raises(ValueError, match="credentials must be given"):
        parse_coordinator("postgresql://:s3cret@h/app")
