"""Test peers for integration tests and the load tool: an MTProxy client, fake DCs and a mask-site stub."""
