"""Benchmarks run with `make bench` (or `pytest benchmarks/`); they are not part of `make test`."""
