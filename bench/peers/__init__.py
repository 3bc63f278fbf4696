"""Wrappers that run other MTProxy engines under the load tool's `--engine-cmd` (see README.md here)."""
