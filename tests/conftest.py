"""Test-suite options: performance benchmarks run only with --perf.  Caches the tests do not
place themselves ($HARNESS_CACHE: dataset indexes, the default feature cache) go to a temporary
folder of this session, not the user's ~/.cache."""

import os
import shutil
import tempfile

import pytest

pytest_plugins = ["pytester"]


def pytest_addoption(parser):
    parser.addoption("--perf", action="store_true", default=False,
                     help="also run the performance benchmarks in tests/perf (slow)")


def pytest_configure(config):
    config.addinivalue_line("markers", "perf: a performance benchmark (run with --perf)")
    if "HARNESS_CACHE" not in os.environ and not hasattr(config, "workerinput"):
        # set before xdist starts its workers, which inherit it
        path = tempfile.mkdtemp(prefix="tradeoff-bench-tests-cache-")
        os.environ["HARNESS_CACHE"] = path
        config.add_cleanup(lambda: (shutil.rmtree(path, ignore_errors=True),
                                    os.environ.pop("HARNESS_CACHE", None)))


def pytest_collection_modifyitems(config, items):
    if config.getoption("--perf"):
        return
    skip = pytest.mark.skip(reason="performance benchmark: run with --perf")
    for item in items:
        if "perf" in item.keywords or item.path.parent.name == "perf":
            item.add_marker(skip)
