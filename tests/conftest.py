"""Test-suite options: performance benchmarks run only with --perf."""

import pytest

pytest_plugins = ["pytester"]


def pytest_addoption(parser):
    parser.addoption("--perf", action="store_true", default=False,
                     help="also run the performance benchmarks in tests/perf (slow)")


def pytest_configure(config):
    config.addinivalue_line("markers", "perf: a performance benchmark (run with --perf)")


def pytest_collection_modifyitems(config, items):
    if config.getoption("--perf"):
        return
    skip = pytest.mark.skip(reason="performance benchmark: run with --perf")
    for item in items:
        if "perf" in item.keywords or item.path.parent.name == "perf":
            item.add_marker(skip)
