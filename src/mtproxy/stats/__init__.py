"""Engine statistics: per-worker counters, cross-worker merging, and the loopback HTTP endpoints."""
