"""Package layout (everything else is in pyproject.toml).

The repository's folders keep their names, but ``fixtures/`` and ``benchmarks/`` install under
the project's own import names: PyPI has an unrelated, widely used package called ``fixtures``.

    harness/     -> harness
    fixtures/    -> tradeoff_bench_fixtures
    benchmarks/  -> tradeoff_bench_benchmarks   (with suites/*.toml)
"""

from setuptools import find_packages, setup

RENAMED = {"tradeoff_bench_fixtures": "fixtures", "tradeoff_bench_benchmarks": "benchmarks"}


def _packages() -> list[str]:
    out = find_packages(include=["harness", "harness.*"])
    for name, folder in RENAMED.items():
        out.append(name)
        out += [f"{name}.{sub}" for sub in find_packages(where=folder)]
    return out


setup(
    packages=_packages(),
    package_dir={"harness": "harness", **RENAMED},
    package_data={"harness": ["data/*.json", "data/*.txt"],
                  "tradeoff_bench_benchmarks": ["suites/*.toml", "suites/*.json", "suites/*.csv"]},
)
