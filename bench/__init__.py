"""The load tool, fake DC and baselines that measure mtproxy (run `python3 -m bench.loadtool --help`)."""
