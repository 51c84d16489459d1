"""Benchmarks: ratios against a baseline measured in the same run (see evidence/bench/README.md)."""
