"""The one error type for user mistakes.

The CLI turns a :class:`NormprobeError` into a single line on stderr and exit status 2;
any other exception is a bug and keeps its traceback.
"""


class NormprobeError(Exception):
    """A problem with the user's input (file, dataset, option), explained in one line."""
