"""Sans-IO protocol core: bytes in, bytes and decisions out. No sockets, files or clocks here."""
