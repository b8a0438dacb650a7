"""Root conftest.

The harness plugin (``harness.plugin``) and its fixtures (``fixtures``) are registered through
the ``pytest11`` entry point of the installed package (``pip install -e .``), so nothing is
needed here; this file marks the repository root as pytest's rootdir, where ``--suite NAME``
resolves to ``benchmarks/suites/NAME.toml``.
"""
