"""The management API: JSON over HTTP on loopback, a bearer token, each route one call into operations/."""
