"""Benchmark suites behind ``tools/benchmark.py``; imported by nothing in the library.

``common`` (results file, worker process, tables), one module per suite (``search``, ``models``,
``quality``), and ``suites.run_suites``, which runs them and merges their records.
"""
