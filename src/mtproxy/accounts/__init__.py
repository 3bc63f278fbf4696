"""Per-secret limits and usage: limits, periods, buckets and the admission policy are pure; the usage
ledger's format and file are here too; the memory shared by workers and the timers belong to the runtime."""
