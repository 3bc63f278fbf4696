"""Tests of the operator CLI, each in its own temp root."""
