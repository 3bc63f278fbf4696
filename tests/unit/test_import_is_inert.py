"""Importing the protocol core, the crypto package and the engine's runtime does nothing: no process, no
library load, no environment read, no clock. Checked in a fresh interpreter with audit hooks and watched
`os.environ`/`time`; what the libraries we import do when they are imported is theirs, so a first, unwatched
interpreter lists them and the watched one imports them before it starts watching."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

import mtproxy

PACKAGES = ("mtproxy.protocol", "mtproxy.crypto", "mtproxy.runtime", "mtproxy.accounts", "mtproxy.stats")

# Runs in the first child: import every module of PACKAGES unwatched and list every other module then loaded.
LIBRARIES = r'''
import importlib, json, pkgutil, sys
for package in PACKAGES:
    for info in pkgutil.iter_modules(importlib.import_module(package).__path__, package + "."):
        if not info.name.endswith("._native_aes"):
            importlib.import_module(info.name)
# (a module some extension registers under a name of its own, Cython's shared one, has no spec to import by)
print(json.dumps(sorted(name for name, module in list(sys.modules.items())
                        if name.split(".")[0] not in ("mtproxy", "__main__")
                        and getattr(module, "__spec__", None) is not None)))
'''

# Runs in the child: watch, then import every module of PACKAGES, then report what was seen.
CHILD = r'''
import collections.abc, importlib, json, os, pkgutil, sys, time
import ctypes  # its own import dlopens the running interpreter (ctypes.pythonapi): not ours to count
for library in PRELOAD:
    importlib.import_module(library)

seen = []
WATCHED_EVENTS = ("subprocess.Popen", "os.system", "os.posix_spawn", "os.exec", "os.fork", "os.forkpty",
                  "ctypes.dlopen", "ctypes.dlsym", "socket.", "time.sleep")


def hook(event, args):
    if event.startswith(WATCHED_EVENTS):
        seen.append(f"{event} {args!r}"[:200])


class WatchedEnviron(collections.abc.MutableMapping):
    def __init__(self, real):
        self._real = real
    def __getitem__(self, key):
        seen.append(f"os.environ[{key!r}]")
        return self._real[key]
    def __setitem__(self, key, value):
        seen.append(f"os.environ[{key!r}] = ...")
        self._real[key] = value
    def __delitem__(self, key):
        seen.append(f"del os.environ[{key!r}]")
        del self._real[key]
    def __iter__(self):
        seen.append("iter(os.environ)")
        return iter(self._real)
    def __len__(self):
        return len(self._real)


def watched_clock(name):
    real = getattr(time, name)
    def read(*args):
        seen.append(f"time.{name}()")
        return real(*args)
    return read


sys.addaudithook(hook)
os.environ = WatchedEnviron(os.environ)
real_getenv = os.getenv
os.getenv = lambda key, default=None: seen.append(f"os.getenv({key!r})") or real_getenv(key, default)
for name in ("time", "monotonic", "perf_counter", "process_time", "time_ns", "monotonic_ns", "perf_counter_ns"):
    setattr(time, name, watched_clock(name))

imported = []
for package in PACKAGES:
    module = importlib.import_module(package)
    imported.append(package)
    for info in pkgutil.iter_modules(module.__path__, package + "."):
        if info.name.endswith("._native_aes"):  # the Rust library: loaded through ctypes, not importable
            continue
        importlib.import_module(info.name)
        imported.append(info.name)
print(json.dumps({"imported": imported, "seen": seen}))
'''


def _libraries() -> list[str]:
    done = subprocess.run([sys.executable, "-c", f"PACKAGES = {PACKAGES!r}\n{LIBRARIES}"], capture_output=True,
                          text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    libraries: list[str] = json.loads(done.stdout)
    return libraries


def test_importing_every_protocol_crypto_and_runtime_module_does_nothing() -> None:
    code = f"PACKAGES = {PACKAGES!r}\nPRELOAD = {_libraries()!r}\n{CHILD}"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    root = Path(mtproxy.__file__).parent
    expected = sorted(f"mtproxy.{package.split('.')[1]}.{path.stem}" if path.stem != "__init__" else package
                      for package in PACKAGES
                      for path in (root / package.split(".")[1]).glob("*.py"))
    assert sorted(report["imported"]) == expected  # every module was imported, not none
    assert report["seen"] == []


@pytest.mark.parametrize("action", ["native.open_library()", "aesblock.open_libcrypto()",
                                    "os.environ.get('MTPROXY_KEYSTREAM')", "time.perf_counter()"])
def test_the_watch_sees_what_start_up_does(action: str) -> None:
    """The same watch catches each thing start-up does (so the test above can fail)."""
    code = (f"PACKAGES = ()\nPRELOAD = ()\n{CHILD}\nimport os, time\nfrom mtproxy.crypto import aesblock, native\n"
            f"seen.clear()\n{action}\nprint(json.dumps(seen))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout.splitlines()[-1]) != []
