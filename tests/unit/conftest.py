"""The AES backends the protocol tests run on: a test that takes `aes` runs once on each backend this machine
has (the native library is skipped where it is not built), built the way the engine's start-up builds them.
The native library runs twice: its VAES walks (where the CPU has VAES) and its AES-NI walks, forced for the
test (what CPUs without VAES run)."""

from __future__ import annotations

import ctypes
from collections.abc import Iterator
from pathlib import Path

import pytest

from mtproxy.crypto import aesblock, backend, native

BACKENDS = ["ctr", "gcm", "native", "native-aesni"]


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
    """`native-aesni` forces the library's AES-NI walks for the process: undo it (`walks`) when done."""
    block = aesblock.block_encryptor(libcrypto)
    if name == "ctr":
        return backend.openssl_ctr(block)
    if name == "gcm":
        return backend.gcm_keystream(libcrypto, block)
    lib = native.open_library()
    if lib is None:
        pytest.skip("the native library is not built here")
    lib.mtp_force_aesni(name == "native-aesni")
    if name == "native" and lib.mtp_walk() != native.WALK_VAES:
        pytest.skip("this CPU has no VAES: native-aesni is what it runs")
    return backend.native_library(lib, block)


def cpu_has(*flags: str) -> bool:
    """Whether /proc/cpuinfo lists every one of `flags` (False without it)."""
    text = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").exists() else ""
    line = next((row for row in text.splitlines() if row.startswith("flags")), "")
    return set(flags) <= set(line.split())


def available(names: list[str]) -> list[str]:
    """Those of `names` this machine runs (the native ones where the library is built, `native` with VAES)."""
    lib = native.open_library()
    walks = [] if lib is None else ["native-aesni"] + (["native"] if lib.mtp_walk() == native.WALK_VAES else [])
    return [name for name in names if name not in backend.NATIVE or name in walks]


def walks_chosen_again() -> None:
    """The library's walks as the CPU allows (after a test that forced AES-NI)."""
    lib = native.open_library()
    if lib is not None:
        lib.mtp_force_aesni(0)


@pytest.fixture(params=BACKENDS)
def aes(request: pytest.FixtureRequest, libcrypto: ctypes.CDLL | None) -> Iterator[backend.Backend]:
    made = make_backend(request.param, libcrypto)
    assert made.name == request.param
    yield made
    walks_chosen_again()
