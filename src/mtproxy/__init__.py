"""mtproxy: a fast, hard-to-detect Telegram proxy and the operator toolkit around it."""

__version__ = "0.1.0"
