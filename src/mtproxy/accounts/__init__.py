"""Per-secret limits and usage: the policy is pure; shared and persisted state belongs to the runtime."""
