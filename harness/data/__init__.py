"""Dataset specs -> samples.  One small module per family, registered by format name.

The registry (and the list of format modules) lives in :mod:`harness.data.registry`; this
package and :mod:`harness.data.base` both import it and never each other.
"""

from __future__ import annotations

from harness.data.base import Dataset, Split, decode_image  # noqa: F401
from harness.data.registry import FORMAT_MODULES, formats, register_format  # noqa: F401

_FORMAT_MODULES = FORMAT_MODULES  # former name


def open_dataset(spec, index_dir=None) -> Dataset:
    """Open the dataset described by a :class:`harness.suite.DatasetSpec`.

    ``index_dir``: the folder for persisted listings (:mod:`harness.data.index`) of formats
    that list folders or take their images from a list; default ``$HARNESS_CACHE`` or
    ``~/.cache/tradeoff-bench``.
    """
    import inspect

    from harness.errors import SuiteError

    table = formats()
    if spec.format not in table:
        raise SuiteError(
            f"{spec.source}: [datasets.{spec.id}] format = {spec.format!r} is unknown; "
            f"expected one of {sorted(table)}"
        )
    opener, _types = table[spec.format]
    if index_dir is not None and "index_dir" in inspect.signature(opener).parameters:
        return opener(spec, index_dir=index_dir)
    return opener(spec)
