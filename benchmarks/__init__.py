"""Benchmarks: ``turngym bench`` (agents on envs, with honest statistics) and throughput scripts.

``turngym.benchmarks.bench`` is the ``turngym bench`` subcommand; the other
modules are scripts, run as ``python -m turngym.benchmarks.<name>`` (from any folder: the
installed package, never the checkout's folders as top-level names). Benchmarks sit at the
top of the import graph: they may import every layer, nothing imports them
but ``cli``.
"""
