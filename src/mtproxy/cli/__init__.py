"""The `mtproxy` command line: one module per subcommand, one edge that turns errors into one line."""
