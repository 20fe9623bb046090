"""The one exception type that means "the user asked for something we cannot do"."""


class UserError(Exception):
    """A problem with the user's input or environment.

    The CLI prints its message on one line and exits with code 2; the library simply raises it.
    """
