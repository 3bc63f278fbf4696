"""The size of a TLS 1.3 server's encrypted first flight (EncryptedExtensions, Certificate, CertificateVerify,
Finished), counted from the records it sends: what the fake certificate record imitates. Sans-IO: the
engine's mask probe (runtime/mask.py) and `mtproxy doctor` feed it the bytes they read."""

from __future__ import annotations

from . import faketls

# Fewer application-data bytes than this before the handshake ends: no TLS 1.3 certificate flight to imitate.
MIN_FLIGHT = 100


class FlightMeter:
    """Feed the server's bytes as they arrive; `total` is the application-data payload in whole records."""

    def __init__(self) -> None:
        self.total = 0
        self._pending = b""

    def feed(self, chunk: bytes) -> None:
        pending = self._pending + chunk
        while len(pending) >= faketls.RECORD_HEADER_SIZE:
            length = int.from_bytes(pending[3:5], "big")
            if len(pending) < faketls.RECORD_HEADER_SIZE + length:
                break
            if pending[:3] == faketls.APPLICATION_DATA:
                self.total += length
            pending = pending[faketls.RECORD_HEADER_SIZE + length :]
        self._pending = pending

    def size(self) -> int | None:
        """The certificate size to imitate: None below MIN_FLIGHT (no TLS 1.3 flight), capped at one record."""
        if self.total < MIN_FLIGHT:
            return None
        return min(self.total, faketls.MAX_RECORD_PAYLOAD)
