"""The AES backends the protocol tests run on: a test that takes `aes` runs once on each backend this machine
has (the native library is skipped where it is not built), built the way the engine's start-up builds them."""

from __future__ import annotations

import ctypes

import pytest

from mtproxy.crypto import aesblock, backend, native

BACKENDS = ["ctr", "gcm", "native"]


@pytest.fixture(scope="session")
def libcrypto() -> ctypes.CDLL | None:
    return aesblock.open_libcrypto()


@pytest.fixture(scope="session")
def lib() -> ctypes.CDLL:
    """The native library itself; tests that take it are skipped where it is not built."""
    loaded = native.open_library()
    if loaded is None:
        pytest.skip("the native library is not built here")
    return loaded


def make_backend(name: str, libcrypto: ctypes.CDLL | None) -> backend.Backend:
    block = aesblock.block_encryptor(libcrypto)
    if name == "ctr":
        return backend.openssl_ctr(block)
    if name == "gcm":
        return backend.gcm_keystream(libcrypto, block)
    lib = native.open_library()
    if lib is None:
        pytest.skip("the native library is not built here")
    return backend.native_library(lib, block)


@pytest.fixture(scope="session", params=BACKENDS)
def aes(request: pytest.FixtureRequest, libcrypto: ctypes.CDLL | None) -> backend.Backend:
    return make_backend(request.param, libcrypto)
