"""Loads the independent known-answer vectors and the deterministic byte source they were made with."""

from __future__ import annotations

import importlib.util
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

DATA = Path(__file__).resolve().parent.parent / "data"

_spec = importlib.util.spec_from_file_location("make_vectors", DATA / "make_vectors.py")
assert _spec is not None and _spec.loader is not None
_make_vectors = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(_make_vectors)

stream: Callable[[bytes], Callable[[int], bytes]] = _make_vectors.stream
VECTORS: dict[str, Any] = json.loads((DATA / "protocol_vectors.json").read_text())
