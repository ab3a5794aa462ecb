"""``coordinator_url_from_django``: followtheleader's coordinator URL for a Django database.

The singleton job's copies elect their leader in the project's own PostgreSQL database, so
nothing new runs: the URL is derived from ``settings.DATABASES["default"]``, and the
database's host, port, name, user, password and libpq options (``sslmode``...) are written
once, in the settings::

    >>> coordinator_url_from_django({
    ...     "ENGINE": "django.db.backends.postgresql", "HOST": "db.internal", "PORT": 5432,
    ...     "NAME": "mysite", "USER": "web", "PASSWORD": "s3cr/t", "OPTIONS": {"sslmode": "require"},
    ... })
    'postgresql://web:s3cr%2Ft@db.internal:5432/mysite?sslmode=require'

Pure string work: no Django import, no connection; it runs on whatever thread calls it.
"""

from __future__ import annotations

import urllib.parse
from collections.abc import Mapping
from typing import Any

__all__ = ["coordinator_url_from_django"]

POSTGRESQL_ENGINES = frozenset({"django.db.backends.postgresql", "django.contrib.gis.db.backends.postgis"})

DJANGO_ONLY_OPTIONS = frozenset(
    {"isolation_level", "server_side_binding", "pool", "assume_role", "cursor_factory", "prepare_threshold", "context"}
)
"""Keys of ``OPTIONS`` that Django's backend uses itself and never passes to libpq: left out
(the coordinator's connections are its own, in autocommit, without prepared statements)."""


def coordinator_url_from_django(
    database: Mapping[str, Any], *, schema: str | None = None, table_prefix: str | None = None
) -> str:
    """The ``postgresql://`` coordinator URL that connects where ``database`` (one entry of
    ``settings.DATABASES``) does.

    * ``HOST``: one host name or address, or several separated by commas (libpq's multi-host
      form; an IPv6 address is bracketed), or a Unix socket's directory such as
      ``/var/run/postgresql`` (percent-encoded, as in libpq's URIs); ``PORT``: one port for
      every host, or one per host; empty for 5432.
    * ``NAME``, ``USER`` and ``PASSWORD`` are percent-encoded into the URL (any character is
      allowed). Without ``USER`` libpq's defaults apply (the OS user, ``~/.pgpass``).
    * ``OPTIONS``: every libpq connection parameter (``sslmode``, ``sslrootcert``,
      ``sslcert``, ``sslkey``, ``connect_timeout``, ``target_session_attrs``...) becomes a
      setting of the URL; Django's own keys (``isolation_level``, ``pool``...) are left out.
      followtheleader refuses, naming it, a parameter it does not pass through.
    * ``schema`` and ``table_prefix`` name where the coordinator's two tables go (default:
      ``public.followtheleader_leader`` and ``public.followtheleader_member``).

    :raises ValueError: for a database that is not PostgreSQL, an empty ``HOST`` (libpq's
        default socket, whose directory the URL must name), a ``HOST`` starting with ``@``
        (an abstract Unix socket) or a ``service`` of ``pg_service.conf``, which the
        coordinator URL cannot name; the message says what to set instead.
    """
    engine = str(database.get("ENGINE", ""))
    if engine not in POSTGRESQL_ENGINES:
        raise ValueError(f"ENGINE {engine!r} is not PostgreSQL: the coordinator must be a PostgreSQL database")
    options = dict(database.get("OPTIONS") or {})
    if "service" in options:
        raise ValueError("OPTIONS['service'] cannot be named in a coordinator URL: set HOST, PORT and NAME")
    hosts = [host.strip() for host in str(database.get("HOST") or "").split(",")]
    for host in hosts:
        if not host:
            raise ValueError(
                "an empty HOST means libpq's default Unix socket, which a coordinator URL cannot name: "
                "set HOST to the socket's directory (such as /var/run/postgresql) or to the server's "
                "name or address, or give the coordinator URL yourself"
            )
        if host.startswith("@"):
            raise ValueError(
                f"HOST {host!r} is a Linux abstract Unix socket, which a coordinator URL cannot name: "
                "let the server listen on a socket directory or on TCP too and set HOST to that, "
                "or give the coordinator URL yourself"
            )
    ports = [port.strip() for port in str(database.get("PORT") or "").split(",") if port.strip()]
    if len(ports) == 1:
        ports *= len(hosts)
    elif ports and len(ports) != len(hosts):
        raise ValueError(f"PORT gives {len(ports)} ports for {len(hosts)} hosts: give one, or one per host")
    name = database.get("NAME")
    if not name:
        raise ValueError("NAME is empty: the coordinator needs the database's name")
    user, password = database.get("USER") or "", database.get("PASSWORD") or ""
    if password and not user:
        raise ValueError("PASSWORD without USER: set USER too (the coordinator URL names both)")

    def quoted(text: Any) -> str:
        return urllib.parse.quote(str(text), safe="")

    def written(host: str) -> str:
        if host.startswith("/"):  # a Unix socket's directory: percent-encoded, as libpq's URIs write it
            return quoted(host)
        return f"[{host}]" if ":" in host else host

    netloc = ",".join(written(host) + (f":{ports[index]}" if ports else "") for index, host in enumerate(hosts))
    credentials = f"{quoted(user)}:{quoted(password)}@" if password else f"{quoted(user)}@" if user else ""
    settings = [(key, str(value)) for key, value in options.items() if key not in DJANGO_ONLY_OPTIONS]
    settings += [(key, value) for key, value in (("schema", schema), ("table_prefix", table_prefix)) if value]
    query = f"?{urllib.parse.urlencode(settings)}" if settings else ""
    return f"postgresql://{credentials}{netloc}/{quoted(name)}{query}"
