"""The classifier tests capture real sessions on loopback: they run only in a private network namespace."""

from __future__ import annotations

from pathlib import Path

import pytest

from ..integration.conftest import only_loopback

HERE = Path(__file__).parent


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    ours = [item for item in items if HERE in Path(str(item.fspath)).parents]
    isolated = only_loopback()
    skip = pytest.mark.skip(reason="the classifier tests run only in a private network namespace (./scripts/test)")
    for item in ours:
        item.add_marker(pytest.mark.netns)
        if not isolated:
            item.add_marker(skip)
