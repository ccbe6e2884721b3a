"""Exceptions raised by the dataset readers, the generator and the validator.

Every error names the offending file (or key) and says what was expected, so
that a failed ``prepare`` job tells the user what to fix without a debugger.
"""

from __future__ import annotations

#: Label value of void pixels (object boundaries, unlabelled regions); losses
#: and metrics skip it. Kept here, not imported from :mod:`eroseg.metrics`, so
#: the data package has no dependency on the rest of the pipeline.
IGNORE_INDEX = 255


class DatasetError(ValueError):
    """A dataset on disk does not have the expected layout or content."""


class DatasetNotFoundError(DatasetError, FileNotFoundError):
    """A file or folder the dataset needs is missing.

    Subclasses both :class:`DatasetError` (so one ``except DatasetError``
    catches every data problem) and :class:`FileNotFoundError` (so generic
    callers that test for missing files still work).
    """
