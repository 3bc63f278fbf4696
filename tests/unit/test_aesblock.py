"""The secret scan's one-block AES and the init trial agree with the full stream decoder."""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor

from hypothesis import given, settings
from hypothesis import strategies as st

from mtproxy.protocol import aesblock, obfs2

from .vectors import VECTORS


def test_libcrypto_is_used_and_agrees_with_cryptography() -> None:
    assert aesblock.uses_libcrypto()  # Debian's python3 links libcrypto; the fallback is tested below
    for _ in range(50):
        key, block = os.urandom(32), os.urandom(16)
        assert aesblock.encrypt_block(key, block) == aesblock._cryptography_encrypt(key, block)


def test_known_answer_vectors_match_and_wrong_keys_do_not() -> None:
    for vector in VECTORS["obfs2"]:
        if vector["secret"] is None:
            continue
        trial = obfs2.InitTrial(bytes.fromhex(vector["wire"]))
        assert trial.matches(bytes.fromhex(vector["secret"]))
        assert not trial.matches(bytes(16))


def test_counter_wraps_around_128_bits() -> None:
    init = bytearray(os.urandom(64))
    init[40:56] = b"\xff" * 16  # the tag block's counter is IV + 3, modulo 2**128
    key = os.urandom(16)
    built = obfs2.build_init(lambda n: bytes(init), obfs2.TAG_PADDED, 2, key)
    assert obfs2.InitTrial(built.wire).matches(key)


@settings(max_examples=200)
@given(st.binary(min_size=64, max_size=64), st.binary(min_size=16, max_size=16))
def test_trial_agrees_with_the_full_decoder(init: bytes, key: bytes) -> None:
    assert obfs2.InitTrial(init).matches(key) == (obfs2.decode_init(init, key) is not None)


def test_threads_sharing_the_libcrypto_context_get_their_own_answers() -> None:
    """ctypes releases the GIL inside libcrypto; without the lock, threads re-key each other's block."""
    jobs = [(os.urandom(32), os.urandom(16)) for _ in range(4000)]
    expected = [aesblock._cryptography_encrypt(key, block) for key, block in jobs]
    with ThreadPoolExecutor(max_workers=4) as pool:
        got = list(pool.map(lambda job: aesblock.encrypt_block(*job), jobs, chunksize=50))
    assert got == expected
