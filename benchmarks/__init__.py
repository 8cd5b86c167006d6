"""Benchmarks for xenchannel: ``python -m benchmarks.run`` (``make bench``).

See ``benchmarks/run.py`` for what is measured and how to read the figures.
"""
