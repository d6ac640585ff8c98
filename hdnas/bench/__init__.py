"""Benchmark suites behind ``tools/benchmark.py``; imported by nothing in the library."""
