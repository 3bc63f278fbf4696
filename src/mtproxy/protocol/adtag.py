"""The ad tag: 16 bytes @MTProxybot gives a proxy's owner, written as 32 hex digits (`-P`, or per secret in
the store), sent to the middle-proxy relays in each RPC_PROXY_REQ so Telegram shows the owner's channel.

Checked as the official MTProxy checks `-P` (mtproto/mtproto-proxy.c: exactly 32 hex digits, either case)."""

from __future__ import annotations

from .errors import AdTagError

__all__ = ["AD_TAG_HEX_DIGITS", "AdTagError", "ad_tag_bytes", "parse_ad_tag"]

AD_TAG_HEX_DIGITS = 32
_HEX = frozenset("0123456789abcdefABCDEF")


def parse_ad_tag(text: str) -> str:
    """The tag as the store and the flags keep it: 32 lowercase hex digits."""
    tag = text.strip()
    if len(tag) != AD_TAG_HEX_DIGITS:
        raise AdTagError(f"an ad tag is exactly {AD_TAG_HEX_DIGITS} hex digits (from @MTProxybot), got"
                         f" {len(tag)} characters")
    bad = next((index for index, char in enumerate(tag) if char not in _HEX), None)
    if bad is not None:
        raise AdTagError(f"an ad tag is {AD_TAG_HEX_DIGITS} hex digits (from @MTProxybot); character"
                         f" {bad + 1} ({tag[bad]!r}) is not one")
    return tag.lower()


def ad_tag_bytes(text: str) -> bytes:
    """The 16 bytes RPC_PROXY_REQ carries (protocol/middleproxy_messages.py)."""
    return bytes.fromhex(parse_ad_tag(text))
