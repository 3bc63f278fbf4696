"""The defaults the settings file, the engine, setup and the health check share: defined here only.

Kept free of imports so the image's frequent `mtproxy healthcheck` can read them for nothing.
"""

from __future__ import annotations

DEFAULT_PORT = 8443  # the CLI's and the image's; the official binary has none
DEFAULT_WORKERS = 1
DEFAULT_STATS_PORT = 8888  # 0 in the file (or -p 0): no stats endpoint
MAX_WORKERS = 64
DEFAULT_METRICS_MAX_SECRETS = 500  # secrets /metrics names one by one; the rest are summed as secret="_other"
