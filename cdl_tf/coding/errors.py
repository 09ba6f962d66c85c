"""The single exception type raised for malformed ``.cdlz`` input."""


class FormatError(ValueError):
    """Malformed, truncated, corrupted or over-limit ``.cdlz`` data.

    Every check the reader performs raises this type, and the message names the
    offending field and value (and the byte offset where that is meaningful).
    """
