"""Hash slots as Redis computes them, and the per-slot epoch tags (pure)."""

from __future__ import annotations

import time

from pgbust.keys import ClusterNames
from pgbust.slots import SLOTS, crc16, group_by_slot, hash_part, key_slot, slot_tag, slot_tags


def test_crc16_is_the_xmodem_checksum_redis_uses() -> None:
    # the reference value from the Redis Cluster specification
    assert crc16(b"123456789") == 0x31C3


def test_known_keys_land_on_the_slots_redis_gives_them() -> None:
    # CLUSTER KEYSLOT of these keys on Redis 7
    assert key_slot("foo") == 12182
    assert key_slot("bar") == 5061
    assert key_slot("{user1000}.following") == key_slot("{user1000}.followers") == 3443


def test_only_the_first_non_empty_braces_are_hashed() -> None:
    assert hash_part("{a}b{c}") == b"a"
    assert hash_part("{}a") == b"{}a"  # empty tag: the whole key
    assert hash_part("a{b") == b"a{b"
    assert hash_part("x{y}}z") == b"y"


def test_every_slot_has_a_short_tag_that_hashes_to_it() -> None:
    started = time.perf_counter()
    tags = slot_tags()
    elapsed = time.perf_counter() - started
    assert len(tags) == SLOTS == len(set(tags))
    assert all(key_slot(f"{{{slot_tag(s)}}}pgbust:epoch") == s for s in range(SLOTS))
    assert max(len(t) for t in tags) <= 4
    print(f"slot table built in {elapsed * 1000:.0f} ms")


def test_keys_are_grouped_per_slot_keeping_their_order() -> None:
    keys = ["{a}x", "{b}x", "{a}y", "{b}y", "{a}z"]
    groups = group_by_slot(keys)
    assert groups[key_slot("a")] == ["{a}x", "{a}y", "{a}z"]
    assert groups[key_slot("b")] == ["{b}x", "{b}y"]


def test_an_entrys_keys_its_home_tag_and_its_epoch_share_one_slot() -> None:
    names = ClusterNames("shop")
    for entry, home in [("product:7", "category:3"), ("product:8", "product:8")]:
        keys = [names.value(entry, home), names.lease(entry, home)]
        keys += [names.tag_generation(home), names.tag_members(home)]
        keys.append(names.epoch_of(keys[0]))
        assert len({key_slot(k) for k in keys}) == 1, keys


def test_a_tagged_entry_lives_with_its_tag_not_with_its_own_name() -> None:
    names = ClusterNames("shop")
    assert key_slot(names.value("product:7", "category:3")) == key_slot("category:3")
