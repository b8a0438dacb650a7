"""Root conftest.

The harness plugin (``harness.plugin``) is registered through the ``pytest11`` entry point of
the installed package (``pip install -e .``), and registers its fixtures
(``fixtures/``, installed as ``tradeoff_bench_fixtures``) itself, so nothing is needed here;
this file marks the repository root as pytest's rootdir, where ``--suite NAME`` resolves to
``benchmarks/suites/NAME.toml``.
"""
