"""Shared helpers for the tests, the benchmarks and the demo."""
