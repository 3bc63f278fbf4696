"""Fixtures for interop tests: a loopback-only guard and a running fake DC."""

from __future__ import annotations

import socket
from collections.abc import Iterator

import pytest

from .fake_dc import FakeDC


def only_loopback() -> bool:
    """True inside `unshare -n` (lo only): real clients here may try to reach Telegram on their own."""
    return [name for _, name in socket.if_nameindex()] == ["lo"]


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    if only_loopback():
        return
    skip = pytest.mark.skip(reason="interop tests run only in a private network namespace (./scripts/test)")
    for item in items:
        if "interop" in item.keywords:
            item.add_marker(skip)


@pytest.fixture
def fake_dc() -> Iterator[FakeDC]:
    with FakeDC() as dc:
        yield dc
