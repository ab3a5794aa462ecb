"""Real ZooKeeper and etcd servers inside lab hosts, for the coordinator-mode tests and benchmarks.

Each server process runs in a lab namespace (:meth:`netlab.Host.popen`), listens only on
that host's lab address, keeps its data in a temporary directory, and is killed (and its
directory removed) by :meth:`ServerSet.close`. ``zookeeperd`` (ZooKeeper 3.8) and
``etcd-server`` (etcd 3.4) are the Debian packages; :func:`unavailable_reason` says why a
backend cannot be tested here.
"""

from __future__ import annotations

import contextlib
import glob
import importlib.util
import os
import shutil
import signal
import socket
import ssl
import subprocess
import tempfile
import time
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from netlab import Host, Lab

ZOOKEEPER_JAR = "/usr/share/java/zookeeper.jar"
ZOOKEEPER_CONF = "/etc/zookeeper/conf"
TICK_MS = 250
"""ZooKeeper's tickTime in the tests: sessions may then be from 0.5 to 5 s... and 20 ticks max."""
ZK_PORT, ETCD_PORT = 2181, 2379
REDIS_PORT, SENTINEL_PORT = 6379, 26379
REDIS_BACKENDS = ("redis", "redis-aof")
"""``redis``: no persistence; ``redis-aof``: the same with ``appendonly yes`` (fsync always)."""
SENTINEL_SERVICE = "ftl"
"""The service (master name) the test sentinels monitor."""
SENTINEL_DOWN_AFTER_MS = 1000
"""The sentinels' ``down-after-milliseconds``: a primary not answering for this long is down."""


PG_PORT, PGBOUNCER_PORT = 5432, 6432
PG_DATABASE, PG_USER = "ftltest", "root"
"""The test user is the clients' own (root): libpq's default, so the URLs carry no credentials."""
POSTGRESQL_BACKENDS = ("postgresql", "pgbouncer")
"""``pgbouncer``: a PostgreSQL server with pgbouncer in transaction mode in front of it."""


def _pg_bin(name: str) -> str | None:
    """The path of a PostgreSQL server program (Debian keeps them out of $PATH)."""
    found = sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"))
    return found[-1] if found else shutil.which(name)


def _as_postgres() -> list[str]:
    """The argv prefix that runs a program as the ``postgres`` user."""
    return [shutil.which("setpriv") or "setpriv", "--reuid=postgres", "--regid=postgres", "--init-groups"]


def _pg_initdb(directory: str, timeout: float | None = None) -> tuple[list[str], str]:
    """A new database cluster in ``directory``/data (owned by ``postgres``; trust
    authentication, superuser ``ftl``), and the argv of ``postgres`` serving it as the
    ``postgres`` user, on port ``PG_PORT``, its Unix socket in ``directory``, without fsync.
    The caller adds where it listens: ``-h ADDRESS``, or ``-c listen_addresses=`` for the
    socket only."""
    shutil.chown(directory, "postgres", "postgres")  # the server runs as postgres: its socket goes here
    data = os.path.join(directory, "data")
    as_postgres = _as_postgres()
    subprocess.run(
        [*as_postgres, _pg_bin("initdb") or "initdb", "-D", data, "-A", "trust", "-U", PG_USER, "--no-sync"],
        check=True,
        capture_output=True,
        cwd=directory,
        timeout=timeout,
    )
    argv = [*as_postgres, _pg_bin("postgres") or "postgres", "-D", data, "-p", str(PG_PORT), "-k", directory]
    return [*argv, "-c", "fsync=off"], data


def _pg_create_database(host: str) -> str | None:
    """One attempt to reach the PostgreSQL server at ``host`` (an address, or a socket's
    directory) and create the test database unless it exists: None once it exists, else
    why not (the server is not up yet, or is failing)."""
    import psycopg

    try:
        with psycopg.connect(
            host=host, port=PG_PORT, user=PG_USER, dbname="postgres", autocommit=True, connect_timeout=2
        ) as conn:
            if conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (PG_DATABASE,)).fetchone() is None:
                conn.execute(f"CREATE DATABASE {PG_DATABASE}")
            return None
    except psycopg.Error as error:
        return str(error)


def unavailable_reason(backend: str) -> str | None:
    """Why ``backend`` cannot be tested on this machine, or None."""
    if backend in REDIS_BACKENDS or backend == "redis-sentinel":
        if importlib.util.find_spec("redis") is None:
            return "redis-py is not installed (pip install 'followtheleader[redis]')"
        if shutil.which("redis-server") is None:
            return "Redis is not installed (apt-get install redis-server)"
        if backend == "redis-sentinel" and shutil.which("redis-sentinel") is None:
            return "Redis Sentinel is not installed (apt-get install redis-sentinel)"
        return None
    if backend in POSTGRESQL_BACKENDS:
        if importlib.util.find_spec("psycopg") is None:
            return "psycopg is not installed (pip install 'followtheleader[postgresql]')"
        if _pg_bin("postgres") is None or _pg_bin("initdb") is None:
            return "PostgreSQL is not installed (apt-get install postgresql)"
        if shutil.which("setpriv") is None:
            return "setpriv is not installed (apt-get install util-linux)"
        if backend == "pgbouncer" and shutil.which("pgbouncer") is None:
            return "pgbouncer is not installed (apt-get install pgbouncer)"
        return None
    if backend == "zookeeper":
        if importlib.util.find_spec("kazoo") is None:
            return "kazoo is not installed (pip install 'followtheleader[zookeeper]')"
        if not os.path.exists(ZOOKEEPER_JAR) or shutil.which("java") is None:
            return "ZooKeeper is not installed (apt-get install zookeeperd)"
        return None
    if importlib.util.find_spec("etcd3gw") is None:
        return "etcd3gw is not installed (pip install 'followtheleader[etcd]')"
    if shutil.which("etcd") is None:
        return "etcd is not installed (apt-get install etcd-server)"
    return None


def _tcp_ready(host: Host, port: int, check: Callable[[socket.socket], bool] | None = None) -> bool:
    def attempt() -> bool:
        try:
            with socket.create_connection((host.address, port), timeout=0.5) as sock:
                return check(sock) if check else True
        except OSError:
            return False

    return host.call_in_namespace(attempt, timeout=5)


def _ruok(sock: socket.socket) -> bool:
    sock.sendall(b"ruok")
    return sock.recv(16) == b"imok"


def _zk_mode(sock: socket.socket) -> bool:
    """ZooKeeper answers ``srvr`` with its mode once it serves (leader, follower, standalone)."""
    sock.sendall(b"srvr")
    data = b""
    while chunk := sock.recv(4096):
        data += chunk
    return b"Mode:" in data


def _redis_ping(sock: socket.socket) -> bool:
    sock.sendall(b"PING\r\n")
    return sock.recv(16).startswith(b"+PONG")


def redis_info(host: Host, port: int, section: str) -> dict[str, str]:
    """``INFO section`` of the Redis server (or sentinel) at ``host``'s address, as a dict."""

    def ask() -> dict[str, str]:
        import redis

        with redis.Redis(host=host.address, port=port, socket_timeout=5, decode_responses=True) as client:
            return {key: str(value) for key, value in client.info(section).items()}

    return host.call_in_namespace(ask, timeout=10)


def _ask_sentinel(host: Host, request: Callable[[Any], Any]) -> Any:
    """``request(client)`` for a client of the sentinel on ``host``."""

    def ask() -> Any:
        import redis

        with redis.Redis(host=host.address, port=SENTINEL_PORT, socket_timeout=5, decode_responses=True) as client:
            return request(client)

    return host.call_in_namespace(ask, timeout=10)


def _sentinel_ready(host: Host, replicas: int) -> bool:
    """The sentinel on ``host`` monitors the service and sees the other two and ``replicas``."""
    try:
        master = _ask_sentinel(host, lambda client: client.sentinel_master(SENTINEL_SERVICE))
    except Exception:  # noqa: BLE001 - not up yet (refused, or no such master yet)
        return False
    return int(master.get("num-other-sentinels", 0)) >= 2 and int(master.get("num-slaves", 0)) >= replicas


def _replica_in_sync(host: Host) -> bool:
    """The replica on ``host`` has its link to the primary up (the first sync is done)."""
    try:
        return redis_info(host, REDIS_PORT, "replication").get("master_link_status") == "up"
    except Exception:  # noqa: BLE001 - not up yet
        return False


def _http_ok(host: Host, port: int, path: str, tls: ssl.SSLContext | None = None) -> bool:
    url = f"{'https' if tls else 'http'}://{host.address}:{port}{path}"

    def attempt() -> bool:
        try:
            with urllib.request.urlopen(url, timeout=0.5, context=tls) as answer:
                return b'"health":"true"' in answer.read()
        except OSError:
            return False

    return host.call_in_namespace(attempt, timeout=5)


@dataclass(frozen=True)
class Certificates:
    """Paths of the files :func:`make_certificates` wrote."""

    ca: str
    server_cert: str
    server_key: str
    client_cert: str
    client_key: str


def make_certificates(directory: str, addresses: list[str]) -> Certificates:
    """A CA, a server certificate for ``addresses`` (IP subject names) and a client certificate,
    in ``directory``. The server certificate is for client use too: etcd's JSON gateway dials
    etcd's gRPC port with it."""
    ca, ca_key = os.path.join(directory, "ca.pem"), os.path.join(directory, "ca.key")
    openssl = shutil.which("openssl") or "openssl"

    def run(*argv: str) -> None:
        subprocess.run([openssl, *argv], check=True, capture_output=True, timeout=60)

    run(
        "req",
        "-x509",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-days",
        "1",
        "-subj",
        "/CN=ftl-test-ca",
        "-keyout",
        ca_key,
        "-out",
        ca,
    )
    sans = ",".join(f"IP:{address}" for address in addresses)
    for name, extensions in (
        ("server", [f"subjectAltName={sans}", "extendedKeyUsage=serverAuth,clientAuth"]),
        ("client", ["extendedKeyUsage=clientAuth"]),
    ):
        key, request, cert, extfile = (os.path.join(directory, f"{name}.{e}") for e in ("key", "csr", "pem", "ext"))
        with open(extfile, "w") as file:
            file.write("\n".join(extensions) + "\n")
        run("req", "-newkey", "rsa:2048", "-nodes", "-subj", f"/CN=ftl-test-{name}", "-keyout", key, "-out", request)
        run(
            "x509",
            "-req",
            "-in",
            request,
            "-CA",
            ca,
            "-CAkey",
            ca_key,
            "-CAcreateserial",
            "-days",
            "1",
            "-extfile",
            extfile,
            "-out",
            cert,
        )
    server_cert, server_key, client_cert, client_key = (
        os.path.join(directory, n) for n in ("server.pem", "server.key", "client.pem", "client.key")
    )
    return Certificates(ca, server_cert, server_key, client_cert, client_key)


class Server:
    """One server process on one lab host; :meth:`start` again after :meth:`kill` restarts it."""

    def __init__(self, host: Host, argv: list[str], log_path: str, ready: Callable[[], bool]) -> None:
        self.host = host
        self.argv = argv
        self.log_path = log_path
        self.ready = ready
        self.proc: subprocess.Popen[Any] | None = None

    def start(self) -> None:
        with open(self.log_path, "ab") as log:
            self.proc = self.host.popen(self.argv, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)

    def wait_ready(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while not self.ready():
            if self.proc is not None and self.proc.poll() is not None:
                raise RuntimeError(f"server on {self.host.name} exited: {self.log_tail()}")
            if time.monotonic() > deadline:
                raise TimeoutError(f"server on {self.host.name} not ready after {timeout} s: {self.log_tail()}")
            time.sleep(0.1)  # polling a server's port from outside: no event to wait on

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(10)

    def log_tail(self) -> str:
        with contextlib.suppress(OSError), open(self.log_path, errors="replace") as log:
            return log.read()[-2000:]
        return ""


class ServerSet:
    """A single server or a cluster of one backend; :attr:`url` is the coordinator URL."""

    def __init__(self, backend: str, hosts: list[Host], tls: bool = False) -> None:
        self.backend = backend
        self.hosts = hosts
        self.dir = tempfile.mkdtemp(prefix=f"ftl-{backend}-")
        self.servers: list[Server] = []
        self.tls = tls
        if backend in REDIS_BACKENDS:
            self.url = f"redis://{hosts[0].address}:{REDIS_PORT}/0?prefix=/ftltest"
            self.servers.append(self._redis(0, hosts[0], appendonly=backend == "redis-aof"))
            return
        if backend == "redis-sentinel":
            self._redis_sentinel(hosts)
            return
        if backend in POSTGRESQL_BACKENDS:
            if tls or len(hosts) != 1:
                raise ValueError("PostgreSQL test servers: one, without TLS")
            self._postgresql(hosts[0], bouncer=backend == "pgbouncer")
            return
        port = ZK_PORT if backend == "zookeeper" else ETCD_PORT
        scheme = ("zookeeper" if backend == "zookeeper" else "etcd") + ("s" if tls else "")
        self.url = f"{scheme}://" + ",".join(f"{h.address}:{port}" for h in hosts) + "/ftltest"
        if tls:
            if backend != "etcd":
                raise ValueError("TLS test servers: etcd only")
            self._make_certificates()
            self.url += f"?ca={self.ca}&cert={self.cert}&key={self.key}"
        for index, host in enumerate(hosts):
            self.servers.append(self._zookeeper(index, host) if backend == "zookeeper" else self._etcd(index, host))

    def _zookeeper(self, index: int, host: Host) -> Server:
        data = os.path.join(self.dir, f"zk{index}")
        os.makedirs(data)
        lines = [
            f"tickTime={TICK_MS}",
            "initLimit=20",
            "syncLimit=8",
            f"dataDir={data}",
            f"clientPortAddress={host.address}",
            f"clientPort={ZK_PORT}",
            "admin.enableServer=false",
            "4lw.commands.whitelist=ruok,srvr",
            "maxSessionTimeout=60000",
        ]
        if len(self.hosts) > 1:
            lines += [f"server.{i + 1}={h.address}:2888:3888" for i, h in enumerate(self.hosts)]
            with open(os.path.join(data, "myid"), "w") as myid:
                myid.write(f"{index + 1}\n")
        config = os.path.join(data, "zoo.cfg")
        with open(config, "w") as file:
            file.write("\n".join(lines) + "\n")
        argv = [
            shutil.which("java") or "java",
            "-Xmx128m",
            "-XX:+UseSerialGC",
            "-XX:TieredStopAtLevel=1",
            f"-Dzookeeper.log.dir={data}",
            "-Dzookeeper.root.logger=INFO,CONSOLE",
            "-Dlog4j.configuration=file:" + os.path.join(ZOOKEEPER_CONF, "log4j.properties"),
            "-Dzookeeper.jmx.log4j.disable=true",
            "-cp",
            f"{ZOOKEEPER_CONF}:{ZOOKEEPER_JAR}",
            "org.apache.zookeeper.server.quorum.QuorumPeerMain",
            config,
        ]
        return Server(host, argv, os.path.join(self.dir, f"zk{index}.log"), lambda: _tcp_ready(host, ZK_PORT, _zk_mode))

    def _redis(self, index: int, host: Host, appendonly: bool = False, extra: tuple[str, ...] = ()) -> Server:
        """One redis-server on ``host``'s lab address only; no persistence unless ``appendonly``
        (then fsync at every write, so that a SIGKILL loses nothing)."""
        data = os.path.join(self.dir, f"redis{index}")
        os.makedirs(data)
        argv = [
            shutil.which("redis-server") or "redis-server",
            "--bind",
            host.address,
            "--port",
            str(REDIS_PORT),
            "--protected-mode",
            "no",
            "--dir",
            data,
            "--save",
            "",
            "--appendonly",
            "yes" if appendonly else "no",
            "--appendfsync",
            "always",
            "--daemonize",
            "no",
            *extra,
        ]
        log = os.path.join(self.dir, f"redis{index}.log")
        return Server(host, argv, log, lambda: _tcp_ready(host, REDIS_PORT, _redis_ping))

    def _redis_sentinel(self, hosts: list[Host]) -> None:
        """A Redis primary on ``hosts[0]``, a replica of it on each of ``hosts[1:-3]`` and a
        sentinel on each of the last three (quorum 2), no persistence anywhere. The replicas
        are ready once in sync, the sentinels once each sees the two others and every replica.
        :attr:`url` names the sentinels (``redis+sentinel://``)."""
        if len(hosts) < 5:
            raise ValueError("Redis Sentinel test servers: a primary, at least one replica and three sentinels")
        primary, replicas, sentinels = hosts[0], hosts[1:-3], hosts[-3:]
        self.servers.append(self._redis(0, primary))
        for index, host in enumerate(replicas, start=1):
            server = self._redis(index, host, extra=("--replicaof", primary.address, str(REDIS_PORT)))
            server.ready = lambda host=host: _tcp_ready(host, REDIS_PORT, _redis_ping) and _replica_in_sync(host)
            self.servers.append(server)
        for index, host in enumerate(sentinels):
            config = os.path.join(self.dir, f"sentinel{index}.conf")
            with open(config, "w") as file:
                file.write(
                    f"bind {host.address}\nport {SENTINEL_PORT}\nprotected-mode no\ndir {self.dir}\n"
                    f"sentinel monitor {SENTINEL_SERVICE} {primary.address} {REDIS_PORT} 2\n"
                    f"sentinel down-after-milliseconds {SENTINEL_SERVICE} {SENTINEL_DOWN_AFTER_MS}\n"
                    f"sentinel failover-timeout {SENTINEL_SERVICE} 6000\n"
                    f"sentinel parallel-syncs {SENTINEL_SERVICE} 1\n"
                )
            argv = [shutil.which("redis-sentinel") or "redis-sentinel", config]
            log = os.path.join(self.dir, f"sentinel{index}.log")
            ready = lambda host=host: _sentinel_ready(host, len(replicas))  # noqa: E731
            self.servers.append(Server(host, argv, log, ready))
        self.url = (
            "redis+sentinel://"
            + ",".join(f"{h.address}:{SENTINEL_PORT}" for h in sentinels)
            + f"/{SENTINEL_SERVICE}/0?prefix=/ftltest"
        )

    def sentinel_primary(self) -> str:
        """The address of the primary as the first sentinel that answers names it."""
        for server in self.servers:
            if server.argv[-1].endswith(".conf") and server.proc is not None and server.proc.poll() is None:
                address = _ask_sentinel(server.host, lambda c: c.sentinel_get_master_addr_by_name(SENTINEL_SERVICE))
                return str(address[0])
        raise RuntimeError("no sentinel runs")

    def server_at(self, address: str) -> Server:
        """The Redis server (not a sentinel) listening on ``address``."""
        return next(s for s in self.servers if s.host.address == address and not s.argv[-1].endswith(".conf"))

    def _requests_served_redis(self) -> int:
        """Redis's ``total_commands_processed`` (the ``INFO`` that reads it is counted in the
        next reading), summed over the servers."""
        return sum(
            int(redis_info(server.host, REDIS_PORT, "stats")["total_commands_processed"]) for server in self.servers
        )

    def _make_certificates(self) -> None:
        """This set's certificates (:func:`make_certificates` for every host's address)."""
        certificates = make_certificates(self.dir, [h.address for h in self.hosts])
        self.ca, self.cert, self.key = certificates.ca, certificates.client_cert, certificates.client_key

    def _client_context(self) -> ssl.SSLContext:
        context = ssl.create_default_context(cafile=self.ca)
        context.load_cert_chain(self.cert, self.key)
        return context

    def _etcd(self, index: int, host: Host) -> Server:
        client_scheme = "https" if self.tls else "http"
        cluster = ",".join(f"e{i}=http://{h.address}:2380" for i, h in enumerate(self.hosts))
        argv = [
            shutil.which("etcd") or "etcd",
            "--name",
            f"e{index}",
            "--data-dir",
            os.path.join(self.dir, f"etcd{index}"),
            "--listen-client-urls",
            f"{client_scheme}://{host.address}:{ETCD_PORT}",
            "--advertise-client-urls",
            f"{client_scheme}://{host.address}:{ETCD_PORT}",
            "--listen-peer-urls",
            f"http://{host.address}:2380",
            "--initial-advertise-peer-urls",
            f"http://{host.address}:2380",
            "--initial-cluster",
            cluster,
            "--initial-cluster-state",
            "new",
            "--initial-cluster-token",
            os.path.basename(self.dir),
            "--heartbeat-interval",
            "50",
            "--election-timeout",
            "500",
            "--log-level",
            "warn",
            "--logger",
            "zap",
        ]
        if self.tls:
            server_cert, server_key = os.path.join(self.dir, "server.pem"), os.path.join(self.dir, "server.key")
            argv += ["--cert-file", server_cert, "--key-file", server_key, "--trusted-ca-file", self.ca]
            argv += ["--client-cert-auth"]
        log = os.path.join(self.dir, f"etcd{index}.log")
        tls = self._client_context() if self.tls else None
        return Server(host, argv, log, lambda: _http_ok(host, ETCD_PORT, "/health", tls))

    def requests_served(self) -> int:
        """Requests the servers have received so far, by their own counters, summed over the
        set (for ``benchmarks/idle_load.py``): ``_requests_served_<backend>`` does the work."""
        count = getattr(self, f"_requests_served_{self.backend.replace('-', '_')}", None)
        if count is None:
            raise NotImplementedError(f"requests_served: not implemented for {self.backend}")
        return int(count())

    def _requests_served_zookeeper(self) -> int:
        """The ``Received`` line of ``srvr`` (packets received, pings included)."""
        total = 0
        for host in self.hosts:
            answer: list[bytes] = []

            def ask(sock: socket.socket, answer: list[bytes] = answer) -> bool:
                sock.sendall(b"srvr")
                while chunk := sock.recv(4096):
                    answer.append(chunk)
                return True

            if not _tcp_ready(host, ZK_PORT, ask):
                raise RuntimeError(f"ZooKeeper at {host.address} did not answer srvr")
            for line in b"".join(answer).decode().splitlines():
                if line.startswith("Received:"):
                    total += int(line.split(":", 1)[1])
        return total

    def _requests_served_etcd(self) -> int:
        """``grpc_server_started_total`` of ``/metrics``, every method summed (the JSON
        gateway's requests are gRPC calls; a watch stream counts once)."""
        tls = self._client_context() if self.tls else None
        total = 0
        for host in self.hosts:
            url = f"{'https' if tls else 'http'}://{host.address}:{ETCD_PORT}/metrics"

            def fetch(url: str = url) -> bytes:
                with urllib.request.urlopen(url, timeout=5, context=tls) as answer:
                    return bytes(answer.read())

            for line in host.call_in_namespace(fetch, timeout=10).decode().splitlines():
                if line.startswith("grpc_server_started_total{"):
                    total += int(float(line.rsplit(" ", 1)[1]))
        return total

    def _postgresql(self, host: Host, bouncer: bool) -> None:
        """A PostgreSQL server (run as the ``postgres`` user, trust authentication for the
        user ``ftl`` from the lab only) and, with ``bouncer``, pgbouncer in transaction mode
        in front of it; :attr:`url` then names pgbouncer."""
        postgres, data = _pg_initdb(self.dir)
        with open(os.path.join(data, "pg_hba.conf"), "w") as hba:
            hba.write("local all all trust\nhost all all all trust\n")
        argv = [*postgres, "-h", host.address, "-c", "max_connections=200"]
        log = os.path.join(self.dir, "postgresql.log")
        self.servers.append(Server(host, argv, log, lambda: self._pg_ready(host)))
        self.url = f"postgresql://{host.address}:{PG_PORT}/{PG_DATABASE}"
        if bouncer:
            ini = os.path.join(self.dir, "pgbouncer.ini")
            users = os.path.join(self.dir, "users.txt")
            with open(users, "w") as file:
                file.write(f'"{PG_USER}" ""\n')
            with open(ini, "w") as file:
                file.write(
                    f"[databases]\n{PG_DATABASE} = host={host.address} port={PG_PORT} dbname={PG_DATABASE}\n"
                    f"[pgbouncer]\nlisten_addr = {host.address}\nlisten_port = {PGBOUNCER_PORT}\n"
                    f"unix_socket_dir =\nauth_type = trust\nauth_file = {users}\npool_mode = transaction\n"
                    "max_client_conn = 500\ndefault_pool_size = 20\n"
                    "ignore_startup_parameters = extra_float_digits,options\n"
                )
            os.chmod(ini, 0o644)
            os.chmod(users, 0o644)
            bouncer_argv = [*_as_postgres(), shutil.which("pgbouncer") or "pgbouncer", ini]
            bouncer_log = os.path.join(self.dir, "pgbouncer.log")
            self.servers.append(Server(host, bouncer_argv, bouncer_log, lambda: _tcp_ready(host, PGBOUNCER_PORT)))
            self.url = f"postgresql://{host.address}:{PGBOUNCER_PORT}/{PG_DATABASE}"

    def _pg_ready(self, host: Host) -> bool:
        """PostgreSQL answers: the test database is created (once) and True."""
        return host.call_in_namespace(lambda: _pg_create_database(host.address) is None, timeout=10)

    def _requests_served_postgresql(self) -> int:
        """PostgreSQL: the transactions the test database has committed and rolled back (each
        statement of the driver is one); the statistics lag by up to a second."""
        import psycopg

        host = self.hosts[0]

        def count() -> int:
            with psycopg.connect(host=host.address, port=PG_PORT, user=PG_USER, dbname="postgres") as conn:
                row = conn.execute(
                    "SELECT xact_commit + xact_rollback FROM pg_stat_database WHERE datname = %s", (PG_DATABASE,)
                ).fetchone()
                return int(row[0]) if row else 0

        return host.call_in_namespace(count, timeout=10)

    _requests_served_pgbouncer = _requests_served_postgresql
    _requests_served_redis_aof = _requests_served_redis

    def start(self, timeout: float = 60.0) -> ServerSet:
        for server in self.servers:
            server.start()
        for server in self.servers:
            server.wait_ready(timeout)
        return self

    def close(self) -> None:
        for server in self.servers:
            server.kill()
        shutil.rmtree(self.dir, ignore_errors=True)


def server_hosts(lab: Lab, names: list[str]) -> list[Host]:
    """The lab hosts ``names``, added to the lab when they are not there yet."""
    return [lab.hosts[name] if name in lab.hosts else lab.add_host(name) for name in names]


class ServerPool:
    """Servers started on first use and kept until :meth:`close`: one :class:`ServerSet` per
    backend and size, on lab hosts of their own (``zs10``, ``es30``...). The ``coordinator_servers``
    fixture of ``conftest.py`` gives each test module one pool, closed after its last test."""

    def __init__(self) -> None:
        self._sets: dict[str, ServerSet] = {}

    def get(self, lab: Lab, backend: str, size: int = 1) -> ServerSet:
        """The running servers of ``backend`` (``size`` of them); the test is skipped, saying
        why, when the backend cannot be tested here."""
        import pytest

        reason = unavailable_reason(backend)
        if reason:
            pytest.skip(reason)
        key = f"{backend}{size}"
        if key not in self._sets:
            tag = {
                "zookeeper": "z",
                "etcd": "e",
                "redis": "r",
                "redis-aof": "ra",
                "postgresql": "p",
                "pgbouncer": "b",
                "redis-sentinel": "rl",
            }.get(backend, backend[:2])
            servers = ServerSet(backend, server_hosts(lab, [f"{tag}s{size}{i}" for i in range(size)]))
            try:
                servers.start()
            except Exception:
                servers.close()
                raise
            self._sets[key] = servers
        return self._sets[key]

    def close(self) -> None:
        for servers in self._sets.values():
            servers.close()
        self._sets.clear()


class UnixPostgreSQL:
    """A PostgreSQL server on a Unix socket only (``listen_addresses`` empty: no TCP), in a
    temporary directory, for tests that need a database but no lab (the fencing recipe's
    epoch guard). :attr:`dsn` is its libpq connection string; :meth:`stop` ends it and removes
    the directory. Raises RuntimeError when it does not come up within ``timeout`` seconds."""

    def __init__(self, timeout: float = 60.0) -> None:
        self.dir = tempfile.mkdtemp(prefix="ftl-pg-unix-")
        self.dsn = f"host={self.dir} port={PG_PORT} user={PG_USER} dbname={PG_DATABASE}"
        self.log_path = os.path.join(self.dir, "postgresql.log")
        self.proc: subprocess.Popen[bytes] | None = None
        try:
            postgres, _ = _pg_initdb(self.dir, timeout)
            argv = [*postgres, "-c", "listen_addresses="]
            with open(self.log_path, "ab") as log:
                self.proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
            self._wait_ready(timeout)
        except BaseException:
            self.stop()
            raise

    def _wait_ready(self, timeout: float) -> None:
        """Poll the socket until the server answers; create the test database once."""
        deadline = time.monotonic() + timeout
        while (error := _pg_create_database(self.dir)) is not None:
            exited = self.proc is not None and self.proc.poll() is not None
            if exited or time.monotonic() > deadline:
                raise RuntimeError(f"PostgreSQL did not start ({error}): {self._log_tail()}")
            time.sleep(0.1)  # polling a server's socket from outside: no event to wait on

    def _log_tail(self) -> str:
        with contextlib.suppress(OSError), open(self.log_path, errors="replace") as log:
            return log.read()[-2000:]
        return ""

    def stop(self) -> None:
        """A fast shutdown (SIGINT: clients disconnected, shared memory freed); SIGKILL if it
        takes more than 10 s. Idempotent."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        shutil.rmtree(self.dir, ignore_errors=True)
