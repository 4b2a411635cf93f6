"""Errors the user can fix, each with a one-line message that names the problem."""


class InputError(ValueError):
    """Bad input: a missing or corrupt image, an unknown method, a budget too large, ..."""


class CheckpointError(ValueError):
    """A checkpoint that cannot be loaded as it is: missing, unexpected or mis-shaped weights."""
