"""`DatasetError`: a dataset file is missing, corrupted or malformed."""


class DatasetError(Exception):
    """A dataset file is missing, fails its checksum or does not parse.

    The message names the file, the expected and actual checksum where one was
    checked, and how to obtain the original file.
    """
