"""The one exception type the CLI turns into a one-line message and a non-zero exit."""


class ForgetkitError(Exception):
    """A problem with the user's input or environment, explained in one line.

    Raise it with the file (and line, where there is one) in the message; the CLI prints
    ``error: <message>`` and exits with status 1 instead of showing a traceback.
    """
