"""The sync message codec: what a node seals, another opens; anything tampered, foreign, old,
replayed, broken or too big is refused with its reason."""

from __future__ import annotations

import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fw.sync.codec import (
    FORMAT_VERSION,
    MAX_MESSAGE,
    Codec,
    Refused,
    ReplayGuard,
    canonical,
    load_key,
)

KEY = b"k" * 32
NOW = 1_790_000_000.0  # wall clock of the tests
BODY = {"why": "new", "session": {"proto": 6, "src": "198.51.100.10", "deadline": NOW + 120.5}}


def node(name: str = "fw1", key: bytes = KEY, cluster: str = "lab") -> Codec:
    return Codec(key, cluster, name, first_seq=1000)


def refusal(receiver: Codec, raw: bytes) -> str:
    with pytest.raises(Refused) as caught:
        receiver.open(raw)
    return caught.value.reason


def test_a_sealed_message_opens_on_another_node_with_every_field():
    raw = node("fw1").seal("session", BODY, NOW)
    message = node("fw2").open(raw)
    assert (message.node, message.seq, message.ts, message.type, message.body) == ("fw1", 1001, NOW, "session", BODY)
    fields = json.loads(raw)
    assert fields["v"] == FORMAT_VERSION and fields["cluster"] == "lab" and len(fields["mac"]) == 64


def test_sequence_numbers_rise_by_one_per_message():
    sender = node()
    seqs = [json.loads(sender.seal("hello", {}, NOW))["seq"] for _ in range(3)]
    assert seqs == [1001, 1002, 1003]


def test_key_order_and_whitespace_do_not_matter_but_every_value_does():
    raw = node().seal("session", BODY, NOW)
    fields = json.loads(raw)
    reordered = json.dumps(dict(reversed(list(fields.items()))), indent=2).encode()
    assert node("fw2").open(reordered).body == BODY
    for name, value in (("node", "fw3"), ("seq", 1002), ("ts", NOW + 1), ("type", "remove"), ("v", FORMAT_VERSION)):
        if fields[name] == value:
            continue
        changed = dict(fields, **{name: value})
        assert refusal(node("fw2"), canonical(changed)) == "mac", name


def test_a_tampered_body_is_refused():
    fields = json.loads(node().seal("session", BODY, NOW))
    fields["body"]["session"]["src"] = "203.0.113.66"  # an attacker's address into the table
    assert refusal(node("fw2"), canonical(fields)) == "mac"


def test_a_flipped_byte_is_refused():
    raw = bytearray(node().seal("session", BODY, NOW))
    where = raw.index(b"198.51.100.10")
    raw[where] = ord("2")
    assert refusal(node("fw2"), bytes(raw)) == "mac"


def test_the_wrong_key_is_refused():
    raw = node(key=b"x" * 32).seal("session", BODY, NOW)
    assert refusal(node("fw2"), raw) == "mac"


def test_a_message_without_a_mac_or_with_a_forged_one_is_refused():
    fields = json.loads(node().seal("session", BODY, NOW))
    assert refusal(node("fw2"), canonical({k: v for k, v in fields.items() if k != "mac"})) == "malformed"
    assert refusal(node("fw2"), canonical(dict(fields, mac="0" * 64))) == "mac"


def test_another_cluster_is_refused_even_with_the_same_key():
    raw = node(cluster="other").seal("session", BODY, NOW)
    assert refusal(node("fw2"), raw) == "cluster"


def test_another_format_version_is_refused():
    fields = json.loads(node().seal("session", BODY, NOW))
    fields["v"] = FORMAT_VERSION + 1
    assert refusal(node("fw2"), canonical(fields)) == "version"


@pytest.mark.parametrize("raw", [
    b"", b"not json", b"[1, 2]", b'"text"', b"\xff\xfe", b"[" * 100_000 + b"]" * 100_000,
    b'{"v": 1}', b'{"v": NaN}',
])  # fmt: skip
def test_malformed_input_is_refused(raw):
    assert refusal(node("fw2"), raw) in ("malformed", "oversize")


@pytest.mark.parametrize("field, value", [
    ("seq", "1"), ("seq", True), ("ts", "now"), ("body", []), ("type", "shutdown"), ("node", 7),
    ("extra", 1),
])  # fmt: skip
def test_fields_of_the_wrong_kind_are_malformed(field, value):
    fields = json.loads(node().seal("session", BODY, NOW))
    fields[field] = value
    assert refusal(node("fw2"), canonical(fields)) == "malformed"


def test_an_infinite_number_is_malformed_not_a_crash():
    raw = node().seal("session", {"deadline": 1.0}, NOW).replace(b'"deadline":1.0', b'"deadline":1e999')
    assert refusal(node("fw2"), raw) == "malformed"


def test_an_oversize_message_is_refused_before_parsing():
    raw = node().seal("session", {"pad": "x" * MAX_MESSAGE}, NOW)
    assert len(raw) > MAX_MESSAGE
    assert refusal(node("fw2"), raw) == "oversize"


def test_a_replayed_message_is_refused_the_second_time():
    sender, receiver, guard = node("fw1"), node("fw2"), ReplayGuard()
    first, second = sender.seal("session", BODY, NOW), sender.seal("session", BODY, NOW)
    guard.check(receiver.open(first), NOW)
    guard.check(receiver.open(second), NOW)
    with pytest.raises(Refused) as caught:
        guard.check(receiver.open(first), NOW + 1)
    assert caught.value.reason == "replay"
    with pytest.raises(Refused) as caught:
        guard.check(receiver.open(second), NOW + 1)
    assert caught.value.reason == "replay"


def test_sequence_numbers_are_per_node():
    guard, receiver = ReplayGuard(), node("fw3")
    guard.check(receiver.open(node("fw1").seal("hello", {}, NOW)), NOW)
    guard.check(receiver.open(node("fw2").seal("hello", {}, NOW)), NOW)  # same seq, other node
    assert guard.last == {("fw1", None): 1001, ("fw2", None): 1001}


def test_each_worker_of_a_node_is_a_sender_of_its_own():
    """fw run --queues: every worker seals with its queue in `w`, under the node's name; their
    sequences interleave on the way, so each has its own replay state. `w` is authenticated."""
    guard, receiver = ReplayGuard(), node("fw3")
    q0, q1 = Codec(KEY, "lab", "fw1", 5000, worker=0), Codec(KEY, "lab", "fw1", 1000, worker=1)
    first = receiver.open(q0.seal("hello", {}, NOW))
    assert (first.node, first.worker) == ("fw1", 0)
    guard.check(first, NOW)
    guard.check(receiver.open(q1.seal("hello", {}, NOW)), NOW)  # lower seq, other worker: fine
    assert guard.last == {("fw1", 0): 5001, ("fw1", 1): 1001}
    replayed = q1.seal("hello", {}, NOW)
    guard.check(receiver.open(replayed), NOW)
    with pytest.raises(Refused, match="replay"):
        guard.check(receiver.open(replayed), NOW)
    moved = replayed.replace(b'"w":1', b'"w":0')  # to another worker's stream: the MAC says no
    assert moved != replayed and refusal(receiver, moved) == "mac"
    for bad in (b'"w":-1', b'"w":"1"', b'"w":70000', b'"w":true'):
        assert refusal(receiver, replayed.replace(b'"w":1', bad)) == "malformed"


def test_old_or_future_messages_are_stale():
    receiver, guard = node("fw2"), ReplayGuard(window=30)
    for sent in (NOW - 31, NOW + 31):
        with pytest.raises(Refused) as caught:
            guard.check(receiver.open(node().seal("hello", {}, sent)), NOW)
        assert caught.value.reason == "stale"
    guard.check(receiver.open(node().seal("hello", {}, NOW - 29)), NOW)


def test_snapshot_entries_may_be_minutes_old_but_not_older_than_the_limit():
    receiver, guard = node("fw2"), ReplayGuard(window=30, snapshot_age=900)
    old = receiver.open(node().seal("session", BODY, NOW - 600))
    guard.check(old, NOW, snapshot=True)
    guard.check(old, NOW, snapshot=True)  # the hash is read again after each reconnection
    with pytest.raises(Refused) as caught:
        guard.check(receiver.open(node().seal("session", BODY, NOW - 901)), NOW, snapshot=True)
    assert caught.value.reason == "stale"


def test_keys_shorter_than_16_bytes_are_refused():
    assert load_key(b"  0123456789abcdef\n") == b"0123456789abcdef"
    with pytest.raises(ValueError, match="at least 16 bytes"):
        load_key(b"short\n")


def test_names_are_checked():
    with pytest.raises(ValueError):
        Codec(KEY, "lab", "fw 1", 0)
    with pytest.raises(ValueError):
        Codec(KEY, "", "fw1", 0)


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=2048))
def test_arbitrary_bytes_are_refused_never_anything_else(raw):
    with pytest.raises(Refused):
        node("fw2").open(raw)


@settings(max_examples=200, deadline=None)
@given(st.dictionaries(st.sampled_from(["v", "cluster", "node", "seq", "ts", "type", "body", "mac", "x"]),
                       st.one_of(st.none(), st.booleans(), st.integers(), st.floats(), st.text(max_size=8),
                                 st.lists(st.integers(), max_size=3), st.dictionaries(st.text(max_size=3),
                                                                                      st.integers(), max_size=2))))
def test_arbitrary_json_objects_are_refused_never_anything_else(fields):
    try:
        raw = json.dumps(fields).encode()
    except ValueError:
        return
    with pytest.raises(Refused):
        node("fw2").open(raw)
