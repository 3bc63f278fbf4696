"""`python -m mtproxy.runtime [run flags]`: the engine without the CLI group (tests, images)."""

import sys

from mtproxy.cli.run import run_command

if __name__ == "__main__":
    sys.exit(run_command(sys.argv[1:]))
