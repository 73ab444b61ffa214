import pytest

from pgbust.keys import Keyspace, category_page_entry, category_summary_entry, product_entry, tag_of
from pgbust.protocol import (
    Busy,
    Hit,
    Invalidation,
    Lease,
    MessageError,
    Refused,
    Targets,
    parse_get_or_lease,
)


def test_category_entries_are_filed_under_their_category_tag() -> None:
    assert tag_of(category_page_entry(7, 20, 40)) == "category:7"
    assert tag_of(category_summary_entry(7)) == "category:7"
    assert tag_of(product_entry(7)) is None


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
