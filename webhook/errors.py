"""The one error a user sees as a message, not a traceback.

Every layer that turns bad input (a flag, an environment variable, a file it cannot read, a
cluster it cannot configure) into a refusal raises a :class:`UserError` or a subclass; the
command line prints it as one ``error: ...`` line and exits with :data:`EXIT_BAD_INPUT`. It
lives on its own so that the CLI, the settings and the server share one class without
importing each other.
"""

from __future__ import annotations

#: Exit code of a command that ran and succeeded.
EXIT_OK = 0
#: Exit code of bad input: the same one argparse uses for a bad flag.
EXIT_BAD_INPUT = 2


class UserError(Exception):
    """Bad input from the user: printed as one line, exit code 2.

    The message must never carry a credential: it names the input (a flag, a file, an
    environment variable), not the secret it may hold.
    """


__all__ = ["EXIT_BAD_INPUT", "EXIT_OK", "UserError"]
