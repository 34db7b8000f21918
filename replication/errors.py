"""The one error type the CLI turns into a single line on stderr and exit status 2."""


class UsageError(Exception):
    """Bad input: unknown experiment, dataset, method or scale, unavailable data, unwritable output, bad floors."""
