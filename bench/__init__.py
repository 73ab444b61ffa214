"""Benchmarks: each writes bench/results/<name>.json and <name>.md; never asserts timings."""
