"""Reliability evidence: fault injection, crash injection and a generated bad-input corpus.

Each suite is a module run as ``python -m evidence.reliability.<suite>`` that drives the real functions over
local services and writes its figures with :func:`bench.report.write`; ``tests/`` runs a small slice
of each (the CI smoke slice).
"""
