"""Reusable helpers for tests (servers and fakes), importable from any test layer."""
