"""Unit and property tests of the wire formats: round trips, and no parser ever raises."""

from __future__ import annotations

import json
from dataclasses import replace

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from followtheleader._core.messages import Message
from followtheleader._core.model import FencingToken, Member, State
from followtheleader._wire.protocol import MAX_DATAGRAM, decode_message, decode_txt, encode_message, encode_txt

node_ids = st.from_regex(r"\A[A-Za-z0-9_-]{1,32}\Z")
members = st.builds(
    Member,
    node_id=node_ids,
    priority=st.integers(-(2**31), 2**31 - 1),
    host=st.sampled_from(["", "198.18.0.1", "fe80::1", "10.1.2.3"]),
    port=st.integers(0, 65535),
)
messages = st.builds(
    Message,
    kind=st.sampled_from(["ping", "pong", "beat", "ack", "claim", "resign", "leave"]),
    group=st.text(min_size=1, max_size=20).filter(lambda g: len(g.encode()) <= 63),
    sender=node_ids,
    priority=st.integers(-(2**31), 2**31 - 1),
    role=st.sampled_from([State.LEADER, State.FOLLOWER, State.ELECTING]),
    term=st.integers(0, 2**53),
    leader=st.none() | node_ids,
    leader_member=st.none() | members,
    members_version=st.integers(0, 2**40),
    members=st.none() | st.lists(members, max_size=40).map(tuple),
    lease_mark=st.floats(0, 1e9),
    boot=st.integers(0, 10**16 - 1),
    protocol=st.sampled_from([2, 3]),
    multicast=st.booleans(),
).flatmap(
    lambda m: (
        st.sampled_from([(0, 1)]).map(lambda b: replace(m, beat=b[0], ack_every=b[1]))
        | st.tuples(st.integers(0, 2**53), st.integers(2, 64)).map(lambda b: replace(m, beat=b[0], ack_every=b[1]))
    )
)


@given(messages)
def test_messages_round_trip(message: Message) -> None:
    data = encode_message(message)
    assert len(data) <= MAX_DATAGRAM
    assert decode_message(data) == message


@settings(max_examples=500)
@given(st.binary(max_size=2000))
def test_decoding_random_bytes_never_raises(data: bytes) -> None:
    decode_message(data)


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=10),
    lambda inner: st.lists(inner, max_size=5) | st.dictionaries(st.text(max_size=5), inner, max_size=5),
    max_leaves=20,
)


@settings(max_examples=500)
@given(
    messages,
    st.sampled_from(["k", "g", "id", "p", "r", "t", "l", "lm", "mv", "m", "v", "pv", "n", "ak", "mc"]),
    json_values,
)
def test_valid_looking_messages_with_a_wrong_field_are_refused_or_well_typed(
    message: Message, key: str, value: object
) -> None:
    body = json.loads(encode_message(message))
    body[key] = value
    decoded = decode_message(json.dumps(body).encode())
    if decoded is not None:
        assert isinstance(decoded.term, int) and isinstance(decoded.sender, str)
        assert decoded.members is None or all(isinstance(m, Member) for m in decoded.members)


def test_protocol_2_messages_keep_their_bytes_and_protocol_3_adds_fields_0_2_ignores() -> None:
    """A node of protocol 2 writes exactly 0.2's datagrams; protocol 3 keeps ``"v": 2`` (0.2
    reads it) and adds ``pv``, and ``n`` and ``ak`` in a beat that thins acks."""
    old = Message("beat", "g", "a", 0, State.LEADER, 4, leader="a", members_version=3, lease_mark=12.5, boot=7)
    assert encode_message(old) == (
        b'{"v":2,"k":"beat","g":"g","id":"a","p":0,"r":"leader","t":4,"mv":3,"l":"a","e":12.5,"b":7}'
    )
    new = replace(old, protocol=3, beat=41, ack_every=4)
    body = json.loads(encode_message(new))
    assert body["v"] == 2 and body["pv"] == 3 and body["n"] == 41 and body["ak"] == 4
    assert decode_message(encode_message(new)) == new
    assert json.loads(encode_message(replace(new, ack_every=1, beat=0))).keys() == {
        *json.loads(encode_message(old)),
        "pv",
    }
    assert json.loads(encode_message(replace(new, multicast=True)))["mc"] == 1
    for key, bad in (("pv", 1), ("pv", "3"), ("ak", 0), ("ak", 65), ("n", -1), ("n", True), ("mc", 2), ("mc", True)):
        assert decode_message(json.dumps({**body, key: bad}).encode()) is None, (key, bad)


def test_truncated_and_oversized_datagrams_are_refused() -> None:
    data = encode_message(Message("ping", "g", "a", 0, State.FOLLOWER, 1, leader="b"))
    for cut in range(len(data)):
        assert decode_message(data[:cut]) is None
    assert decode_message(b"{" + b" " * MAX_DATAGRAM + b"}") is None


def test_txt_round_trip_and_rejections() -> None:
    member = Member("node-1", 7, "198.18.0.4", 9001)
    txt = encode_txt("My Group", member, State.LEADER, 12)
    record = decode_txt(txt, "198.18.0.4")
    assert record is not None
    assert (record.group, record.member, record.role, record.term) == ("My Group", member, State.LEADER, 12)
    for key in txt:
        broken = dict(txt)
        del broken[key]
        assert decode_txt(broken, "198.18.0.4") is None, key
    assert decode_txt({**txt, "p": "1e9"}, "198.18.0.4") is None
    assert decode_txt({**txt, "hp": "0"}, "198.18.0.4") is None
    assert decode_txt(txt, "not-an-ip") is None
    assert decode_txt({**txt, "t": None}, "198.18.0.4") is None  # type: ignore[dict-item]


@given(st.dictionaries(st.sampled_from(["v", "g", "id", "p", "r", "t", "hp", "x"]), st.none() | st.text(max_size=70)))
def test_decoding_random_txt_never_raises(properties: dict) -> None:
    decode_txt(properties, "198.18.0.1")


tokens = st.builds(
    FencingToken,
    term=st.integers(0, 2**53),
    priority=st.integers(-(2**31), 2**31 - 1),
    node_id=node_ids,
    boot=st.integers(0, 2**63 - 1),
)


@given(tokens, tokens)
def test_fencing_token_keys_sort_as_the_tokens_do_and_read_back(a: FencingToken, b: FencingToken) -> None:
    assert len(a.key) == 104 and set(a.key) <= set("0123456789abcdef")
    assert (a < b) == (a.key < b.key) and (a == b) == (a.key == b.key)
    assert (a < b) == (a.key.encode() < b.key.encode())  # byte order, as SQL's binary collations
    assert FencingToken.from_key(a.key) == a and str(a) == a.key


def test_fencing_token_orders_by_term_then_priority_then_node_id_then_boot() -> None:
    ordered = [
        FencingToken(3, 5, "z", 9),
        FencingToken(4, -1, "a", 0),
        FencingToken(4, 0, "a", 0),
        FencingToken(4, 0, "a-b", 0),
        FencingToken(4, 0, "ab", 0),
        FencingToken(4, 0, "ab", 1),
    ]
    assert sorted(ordered, key=lambda t: t.key) == ordered == sorted(ordered)
    for bad in ("", "0" * 103, "g" * 104, "0" * 105):
        with pytest.raises(ValueError):
            FencingToken.from_key(bad)


def test_txt_carries_the_boot() -> None:
    txt = encode_txt("g", Member("n", 0, "198.18.0.4", 9001), State.LEADER, 3, 1764680000123456)
    record = decode_txt(txt, "198.18.0.4")
    assert record is not None and record.boot == 1764680000123456
