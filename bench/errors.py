"""How a command ends early: bad input (exit 2), a refused write (exit 5), a stop signal (128+N).

Raised below the command line (the session, the commands' calls) and mapped to exit statuses
by :func:`bench.cli.main`; here, light to import, so that neither side imports the other and
``main`` can catch them before anything heavy is imported.
"""

import signal


class UsageError(Exception):
    """Bad input: reported as one line, exit status 2, nothing written."""


class WriteError(Exception):
    """Results could not be written (a full disk): reported as one line, exit status 5."""


class Stopped(BaseException):
    """The run was asked to stop by a signal; ``signum`` says which (SIGINT for Ctrl-C)."""

    def __init__(self, signum: int):
        super().__init__(signal.Signals(signum).name)
        self.signum = signum
