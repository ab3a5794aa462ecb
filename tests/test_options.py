"""Unit tests of option parsing: defaults, aliases and a clear error for every bad value."""

from __future__ import annotations

import pytest

from followtheleader import elect
from followtheleader._options import DEFAULT_PORT, parse_options


def test_defaults_follow_the_npm_original_where_they_make_sense() -> None:
    options = parse_options("MyService")
    assert options.name == "MyService"
    assert options.type == "ftl" and options.service_type == "_ftl._udp.local."
    assert options.port == DEFAULT_PORT == 9001 and not options.port_explicit
    assert options.host == "0.0.0.0"
    assert options.max_failed_responses == 3
    assert options.interval < 1.0
    assert options.npm_compat is True
    assert len(options.node_id) == 16


def test_keywords_mapping_and_aliases_are_equivalent() -> None:
    by_keywords = parse_options(name="svc", port=9100, max_failed_responses=5, node_id="n1")
    by_mapping = parse_options({"name": "svc", "port": 9100, "maxFailedResponses": 5, "node_id": "n1"})
    assert by_keywords == by_mapping
    assert by_keywords.port_explicit
    assert parse_options("svc", nodeId="x").node_id == "x"


@pytest.mark.parametrize(
    ("kwargs", "error", "words"),
    [
        ({}, TypeError, "'name' is required"),
        ({"name": 5}, TypeError, "'name' must be a str"),
        ({"name": ""}, ValueError, "'name' must be 1 to 63 bytes"),
        ({"name": "x" * 64}, ValueError, "'name' must be 1 to 63 bytes"),
        ({"name": "a\nb"}, ValueError, "control characters"),
        ({"name": "s", "port": "9001"}, TypeError, "'port' must be an int"),
        ({"name": "s", "port": 70000}, ValueError, "'port' must be from 0 to 65535"),
        ({"name": "s", "port": True}, TypeError, "'port' must be an int"),
        ({"name": "s", "host": "localhost"}, ValueError, "'host' must be an IP address"),
        ({"name": "s", "type": "f.t.l"}, ValueError, "'type' must be a DNS-SD service label"),
        ({"name": "s", "max_failed_responses": 1}, ValueError, "'max_failed_responses' must be from 2"),
        ({"name": "s", "max_failed_responses": 2.5}, TypeError, "'max_failed_responses' must be an int"),
        ({"name": "s", "interval": 0}, ValueError, "'interval' must be from 0.01 to 60"),
        ({"name": "s", "interval": float("nan")}, ValueError, "'interval'"),
        ({"name": "s", "interval": "1"}, TypeError, "'interval' must be a number"),
        ({"name": "s", "priority": 1.5}, TypeError, "'priority' must be an int"),
        ({"name": "s", "node_id": "has space"}, ValueError, "'node_id' must be 1 to 32"),
        ({"name": "s", "interfaces": "198.18.0.1"}, TypeError, "'interfaces' must be a list"),
        ({"name": "s", "interfaces": ["nope"]}, ValueError, "'interfaces' holds 'nope'"),
        ({"name": "s", "interfaces": []}, ValueError, "'interfaces' must not be empty"),
        ({"name": "s", "ip_version": "v5"}, ValueError, "'ip_version' must be one of"),
        ({"name": "s", "npm_compat": "yes"}, TypeError, "'npm_compat' must be True or False"),
        ({"name": "s", "colour": "red"}, TypeError, "unknown option(s) 'colour'"),
        ({"name": "s", "maxFailedResponses": 3, "max_failed_responses": 3}, TypeError, "are the same option"),
    ],
)
def test_bad_values_raise_naming_the_option(kwargs: dict, error: type, words: str) -> None:
    with pytest.raises(error) as raised:
        elect(**kwargs)
    assert words in str(raised.value)


def test_positional_name_and_mapping_conflicts() -> None:
    with pytest.raises(TypeError, match="given twice"):
        parse_options({"name": "a"}, name="b")
    with pytest.raises(TypeError, match="only positional argument"):
        parse_options("a", "b")


def test_ipv6_mdns_gets_dual_stack_heartbeats_unless_a_host_is_given() -> None:
    assert parse_options("s", ip_version="all").host == "::"
    assert parse_options("s", ip_version="v6", host="::1").host == "::1"
    assert parse_options("s", host=None).host == "0.0.0.0"
