"""One error family for the protocol core: every exception it defines is a ProtocolError, defined in errors.py."""

from __future__ import annotations

import importlib
import inspect
import pkgutil

import mtproxy.protocol
from mtproxy.protocol import errors, faketls


def test_every_protocol_exception_is_a_protocol_error_from_errors_py() -> None:
    found = []
    for info in pkgutil.iter_modules(mtproxy.protocol.__path__, "mtproxy.protocol."):
        if info.name.endswith("._native_aes"):  # a stale copy of the Rust library from before it moved to crypto/
            continue
        module = importlib.import_module(info.name)
        for _, value in inspect.getmembers(module, inspect.isclass):
            if issubclass(value, BaseException) and value.__module__.startswith("mtproxy."):
                found.append(value)
                assert value.__module__ == errors.__name__, value
                assert issubclass(value, errors.ProtocolError), value
    assert {errors.ProtocolError, errors.TlsFormatError, errors.SecretFormatError} <= set(found)


def test_the_record_readers_raise_the_family_member_their_callers_catch() -> None:
    assert faketls.TlsFormatError is errors.TlsFormatError
    try:
        faketls.TlsRecordReader().unwrap(b"\x15\x03\x03\x00\x02\x02\x28")  # an alert record
    except errors.ProtocolError as exc:
        assert type(exc) is errors.TlsFormatError
    else:
        raise AssertionError("an alert record was accepted")
