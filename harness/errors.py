"""One error type per kind of user mistake.

Every message is one line that names the file (or path), the key and what was expected.
"""


class HarnessError(Exception):
    """Base class of every error the harness raises on purpose."""


class SuiteError(HarnessError):
    """A structural mistake in a suite file: raised before any model loads."""


class DataError(HarnessError):
    """A dataset on disk is malformed (bad labels, corrupt pack, missing listed image...)."""


class DataMissing(HarnessError):
    """A dataset's files are absent: the cases that need it skip (or fail with --require-data)."""


class ModelError(HarnessError):
    """A model or checkpoint cannot be loaded as configured."""


class UnsafePickleError(ModelError, DataError):
    """A pickle tried to reference something other than plain data; nothing was executed."""
