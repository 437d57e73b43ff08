"""Benchmarks: ``python -m benchmarks.<name>``; each prints ratios against a baseline measured in the same run."""
