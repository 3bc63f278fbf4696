"""Run one fuzz target under atheris: `python3 -m tests.fuzz.run TARGET [libFuzzer flags] [corpus dirs]`.

Examples (from the repository root):
    python3 -m tests.fuzz.run handshake -runs=100000
    python3 -m tests.fuzz.run tls_hello -max_total_time=600 /tmp/corpus-tls
The protocol core is instrumented for coverage; the captured TDLib flights are added as seeds when a
corpus directory is given and empty.
"""

from __future__ import annotations

import sys
from pathlib import Path

import atheris


def main() -> None:
    if len(sys.argv) < 2 or sys.argv[1].startswith("-"):
        sys.exit("usage: python3 -m tests.fuzz.run TARGET [libFuzzer flags] [corpus dirs]")
    target_name = sys.argv.pop(1)
    with atheris.instrument_imports(include=["mtproxy"]):
        from . import targets
    if target_name not in targets.TARGETS:
        sys.exit(f"unknown target {target_name!r}; known: {', '.join(targets.TARGETS)}")
    corpus_dirs = [Path(arg) for arg in sys.argv[1:] if not arg.startswith("-")]
    if corpus_dirs and corpus_dirs[0].is_dir() and not any(corpus_dirs[0].iterdir()):
        for n, seed in enumerate(targets.seeds(target_name)):
            (corpus_dirs[0] / f"seed-{n}").write_bytes(seed)
    atheris.Setup(sys.argv, targets.TARGETS[target_name])
    atheris.Fuzz()


if __name__ == "__main__":
    main()
