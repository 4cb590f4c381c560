"""One exception for every mistake a user can make: the CLI prints its message as one line."""


class UserError(Exception):
    """A bad input (override, file, checkpoint, device). Printed as one line, exit code 2."""

    exit_code = 2
