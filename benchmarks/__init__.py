"""The benchmark functions and the shipped suites (``suites/*.toml``).

Installed as ``tradeoff_bench_benchmarks``: outside a checkout, ``pytest --pyargs
tradeoff_bench_benchmarks`` runs the demo, and ``--suite NAME`` finds ``suites/NAME.toml`` here.
"""
