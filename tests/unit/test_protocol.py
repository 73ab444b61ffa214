import pytest

from pgbust.keys import Keyspace
from pgbust.protocol import (
    NOT_LIVE,
    Busy,
    Heartbeat,
    Hit,
    Invalidation,
    Lease,
    MessageError,
    Refused,
    Targets,
    decode_message,
    parse_get_or_lease,
)


def test_keyspace_prefixes_every_key_with_the_namespace() -> None:
    ks = Keyspace("shop")
    assert ks.value("product:1") == "shop:v:product:1"
    assert ks.lease("product:1") == "shop:l:product:1"
    assert ks.entry_of(ks.value("category:2:summary")) == "category:2:summary"
    assert ks.channel == "shop:invalidations"


def test_targets_merge_unions_keys_tags_and_flush() -> None:
    merged = Targets.merge(
        [Targets(frozenset({"product:1"})), Targets(tags=frozenset({"category:2"}), flush=True)]
    )
    assert merged == Targets(frozenset({"product:1"}), frozenset({"category:2"}), True)
    assert not Targets()


def test_invalidation_message_round_trips() -> None:
    message = Invalidation(keys=("product:1",), tags=("category:3",), ts_us=123, origin="api")
    assert Invalidation.decode(message.encode()) == message


def test_flush_message_round_trips_with_reason() -> None:
    message = Invalidation(flush=True, origin="invalidator", reason="listener reconnected")
    decoded = Invalidation.decode(message.encode())
    assert decoded.flush and decoded.reason == "listener reconnected"


@pytest.mark.parametrize(
    "raw",
    [
        b"not json",
        b"[]",
        b'{"v": 2}',
        b'{"v": 1, "k": "product:1"}',
        b'{"v":1,"k":[1]}',
        b'{"v":1,"ts":"x"}',
    ],
)
def test_malformed_messages_raise_message_error(raw: bytes) -> None:
    with pytest.raises(MessageError):
        Invalidation.decode(raw)


def test_lease_replies_are_parsed() -> None:
    assert parse_get_or_lease([1, b"5.0|", b'5.0|{"a":1}'], "t") == Hit(b'{"a":1}')
    assert parse_get_or_lease([2, b"5.0|"], "tok") == Lease("tok", "5.0|")
    assert parse_get_or_lease([3, b"5.0|"], "tok") == Busy("5.0|")
    full = parse_get_or_lease([4, b"OOM command not allowed when used memory > 'maxmemory'."], "t")
    assert isinstance(full, Refused) and full.out_of_memory
    assert parse_get_or_lease([4, b"READONLY You can't write against a replica."], "t") == Refused(
        "READONLY You can't write against a replica."
    )


def test_heartbeat_round_trips_and_is_an_empty_invalidation_to_old_receivers() -> None:
    beat = Heartbeat(every_ms=500, sender="host:42/3", proof_age_ms=7)
    assert decode_message(beat.encode()) == beat
    # a subscriber that predates heartbeats reads it as an invalidation of nothing
    old_view = Invalidation.decode(beat.encode())
    assert (old_view.keys, old_view.tags, old_view.flush) == ((), (), False)


def test_a_v1_message_of_an_unknown_kind_invalidates_nothing_and_is_not_refused() -> None:
    message = decode_message(b'{"v":1,"o":"cdc","future":{"x":1}}')
    assert isinstance(message, Invalidation) and not (message.keys or message.tags or message.flush)


@pytest.mark.parametrize(
    "raw", [b'{"v":1,"hb":"x"}', b'{"v":1,"hb":{}}', b'{"v":1,"hb":{"e":0}}', b'{"v":2,"hb":{}}']
)
def test_malformed_heartbeats_raise_message_error(raw: bytes) -> None:
    with pytest.raises(MessageError):
        decode_message(raw)


def test_not_live_reply_of_the_capture_gate_is_parsed() -> None:
    assert parse_get_or_lease([0, b""], "tok") == NOT_LIVE
