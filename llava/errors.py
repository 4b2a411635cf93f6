"""Errors the user can fix, each with a one-line message that names the problem."""


class InputError(ValueError):
    """Bad input: a missing or corrupt image, an unknown method, a budget too large, ..."""


class CheckpointError(ValueError):
    """A checkpoint that cannot be loaded as it is: missing, unexpected or mis-shaped weights."""


EXIT_USAGE = 2  # the exit status of every error a user can fix


def check_at_least(option: str, value: int, least: int, why: str = "") -> None:
    """InputError `<option> must be at least <least>[ (why)], got <value>` when value < least."""
    if value < least:
        raise InputError(f"{option} must be at least {least}{f' ({why})' if why else ''}, got {value}")


def print_error(error: Exception) -> int:
    """Print `error: <message>` as one line on stderr and return EXIT_USAGE, for a command's main.

    An OSError (a file that cannot be read or written, a full disk) says what failed and on which path,
    without Python's errno prefix.
    """
    import sys

    if isinstance(error, OSError) and error.strerror:
        message = error.strerror + (f": {error.filename}" if error.filename else "")
    else:
        message = str(error)
    print(f"error: {' '.join(message.split())}", file=sys.stderr)
    return EXIT_USAGE
