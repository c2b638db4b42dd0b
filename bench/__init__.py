"""Benchmarks and the cost model of baton-fast (installed as ``baton_fast.bench``)."""
