"""aioproc's benchmark suite: ``python -m benchmarks [--quick] [--smoke] [--only NAME...]``.

One module per measurement (``spawn``, ``concurrency``, ``throughput``,
``roundtrip``, ``fork``, ``detach``), each declaring its implementations, its
cases and the code of one run; ``_runner`` runs them in fresh interpreters in
shuffled rounds, ``_report`` writes the tables, the JSON and the plot. See
``benchmarks/README.md``.
"""
