"""The operations on an installation that the CLI and the management API share: one function per operation.

Each takes typed inputs and an `Ops` context (paths, runner, clock, randomness), changes the store through
`store.update_store`, gets the running proxy to reload, and returns a result object; the CLI prints it, the
API serialises it. Nothing here imports the CLI or the API.
"""
