"""Benchmarks for `make bench`: figures and ratios, printed and written to bench/results.json."""
