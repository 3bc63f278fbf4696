"""The bounded replay filter."""

from __future__ import annotations

import functools
import os

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mtproxy.crypto import native
from mtproxy.protocol.replay import ReplayFilter


def test_remembers_until_expiry() -> None:
    replay = ReplayFilter.in_process(64)
    digest = os.urandom(16)
    assert not replay.check_and_add(digest, 1000.0, 60)
    assert replay.check_and_add(digest, 1059.0, 60)
    assert not replay.check_and_add(digest, 1061.0, 60)


def test_a_lookup_remembers_nothing() -> None:
    replay = ReplayFilter.in_process(64)
    digest = os.urandom(16)
    assert not replay.seen(digest, 1000.0)
    assert not replay.check_and_add(digest, 1000.0, 60)  # the lookup did not insert it
    assert replay.seen(digest, 1059.0)
    assert not replay.seen(digest, 1061.0)  # expired


def test_memory_is_bounded_and_newest_kept() -> None:
    replay = ReplayFilter.in_process(1000)
    size = ReplayFilter.memory_size(1000)
    digests = [os.urandom(16) for _ in range(20_000)]
    for i, digest in enumerate(digests):
        replay.check_and_add(digest, 1000.0 + i, 10**6)
    assert replay.capacity >= 1000 and size < 64 * 1024
    recent_hits = sum(replay.check_and_add(d, 30_000.0, 10**6) for d in digests[-200:])
    assert recent_hits >= 190  # the newest entries survive eviction


def test_shared_memory_view_sees_the_same_entries() -> None:
    memory = bytearray(ReplayFilter.memory_size(128))
    first, second = ReplayFilter(memory), ReplayFilter(memoryview(memory))
    digest = os.urandom(16)
    assert not first.check_and_add(digest, 5.0, 60)
    assert second.check_and_add(digest, 6.0, 60)


@given(st.lists(st.binary(min_size=16, max_size=32), max_size=200))
def test_never_a_false_negative_within_capacity(digests: list[bytes]) -> None:
    replay = ReplayFilter.in_process(4096)
    unique = list(dict.fromkeys(d[:16] for d in digests))
    for d in unique:
        assert not replay.check_and_add(d, 100.0, 60)
    # Within capacity a bucket overflow is still possible; it only ever forgets, never invents.
    assert sum(replay.check_and_add(d, 101.0, 60) for d in unique) >= len(unique) * 0.9


def test_long_lived_entries_do_not_push_out_a_younger_hello() -> None:
    replay = ReplayFilter(bytearray(ReplayFilter.memory_size(8)))  # one bucket of 8
    for i in range(8):
        replay.check_and_add(os.urandom(16), 1000.0 + i, 24 * 3600)  # classic inits, kept a day
    hello = os.urandom(16)
    assert not replay.check_and_add(hello, 1010.0, 240)  # evicts the oldest init
    assert not replay.check_and_add(os.urandom(16), 1011.0, 24 * 3600)  # evicts the next oldest init
    assert replay.check_and_add(hello, 1012.0, 240)  # the hello is still remembered


@settings(max_examples=60, deadline=None)
@given(steps=st.lists(st.tuples(st.integers(0, 40), st.integers(0, 30), st.integers(0, 20), st.booleans()),
                      min_size=1, max_size=120),
       buckets=st.integers(1, 3))
def test_the_native_filter_answers_and_remembers_as_the_python_one(
        steps: list[tuple[int, int, int, bool]], buckets: int) -> None:
    """The library's check on twin memories: the same answers and, byte for byte, the same memory after every
    step (lookups, inserts, repeats, expiries, evictions of full buckets)."""
    lib = native.open_library()
    if lib is None:
        pytest.skip("the native library is not built here, or this CPU lacks what it needs")
    python, library = (bytearray(ReplayFilter.memory_size(8 * buckets)) for _ in range(2))
    ours, theirs = ReplayFilter(python), ReplayFilter(library, functools.partial(native.NativeReplay, lib))
    for key, now, ttl, lookup in steps:
        digest = key.to_bytes(2, "little") * 8
        moment = 1_700_000_000.5 + now
        if lookup:
            assert ours.seen(digest, moment) == theirs.seen(digest, moment)
        else:
            assert ours.check_and_add(digest, moment, ttl) == theirs.check_and_add(digest, moment, ttl)
        assert python == library
