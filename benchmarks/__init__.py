"""Benchmark harness: tcia-fetch against its peers on the fake NBIA server (see README.md).

Not part of the installed package and not a test suite: timings are measured and reported, never
asserted. Entry point: ``python -m benchmarks``.
"""
