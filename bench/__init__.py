"""Benchmarks: ``python -m bench SCENARIO`` prints figures (never asserted in tests)."""
