"""The secret scan's one-block AES and the init trial agree with the full stream decoder."""

from __future__ import annotations

import ctypes
import os
from concurrent.futures import ThreadPoolExecutor

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mtproxy.crypto import aesblock
from mtproxy.crypto.backend import Backend
from mtproxy.protocol import obfs2

from .vectors import VECTORS


def test_libcrypto_is_used_and_agrees_with_cryptography(libcrypto: ctypes.CDLL | None) -> None:
    encrypt_block = aesblock.block_encryptor(libcrypto)
    # Debian's python3 links libcrypto; the fallback is what a machine without it gets
    assert isinstance(getattr(encrypt_block, "__self__", None), aesblock.EvpBlock)
    assert aesblock.block_encryptor(None) is aesblock.cryptography_encrypt_block
    for _ in range(50):
        key, block = os.urandom(32), os.urandom(16)
        assert encrypt_block(key, block) == aesblock.cryptography_encrypt_block(key, block)


def test_a_run_of_blocks_is_each_block_encrypted(libcrypto: ctypes.CDLL | None) -> None:
    """What the fake certificate's keystream takes: many blocks under one key in one call (ECB)."""
    encrypt_block = aesblock.block_encryptor(libcrypto)
    for count in (1, 2, 3, 157, 1024):
        key, blocks = os.urandom(32), os.urandom(16 * count)
        one_by_one = [aesblock.cryptography_encrypt_block(key, blocks[i : i + 16]) for i in range(0, len(blocks), 16)]
        assert encrypt_block(key, blocks) == b"".join(one_by_one)
    if libcrypto is not None:
        for wrong in (b"", bytes(15), bytes(17)):
            with pytest.raises(ValueError):
                aesblock.EvpBlock(libcrypto).encrypt(bytes(32), wrong)


def test_known_answer_vectors_match_and_wrong_keys_do_not(aes: Backend) -> None:
    for vector in VECTORS["obfs2"]:
        if vector["secret"] is None:
            continue
        trial = obfs2.InitTrial(bytes.fromhex(vector["wire"]), aes)
        assert trial.matches(bytes.fromhex(vector["secret"]))
        assert not trial.matches(bytes(16))


def test_counter_wraps_around_128_bits(aes: Backend) -> None:
    init = bytearray(os.urandom(64))
    init[40:56] = b"\xff" * 16  # the tag block's counter is IV + 3, modulo 2**128
    key = os.urandom(16)
    built = obfs2.build_init(lambda n: bytes(init), obfs2.TAG_PADDED, 2, key, aes)
    assert obfs2.InitTrial(built.wire, aes).matches(key)


@settings(max_examples=200, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.binary(min_size=64, max_size=64), st.binary(min_size=16, max_size=16))
def test_trial_agrees_with_the_full_decoder(aes: Backend, init: bytes, key: bytes) -> None:
    assert obfs2.InitTrial(init, aes).matches(key) == (obfs2.decode_init(init, key, aes) is not None)


def test_threads_sharing_the_libcrypto_context_get_their_own_answers(libcrypto: ctypes.CDLL | None) -> None:
    """ctypes releases the GIL inside libcrypto; without the lock, threads re-key each other's block."""
    encrypt_block = aesblock.block_encryptor(libcrypto)
    jobs = [(os.urandom(32), os.urandom(16)) for _ in range(4000)]
    expected = [aesblock.cryptography_encrypt_block(key, block) for key, block in jobs]
    with ThreadPoolExecutor(max_workers=4) as pool:
        got = list(pool.map(lambda job: encrypt_block(*job), jobs, chunksize=50))
    assert got == expected
