"""The exception type for user mistakes.

Code that checks what a user gave (a path, a config value, a file's contents) raises a :class:`UserError`
subclass; the CLI prints those as one ``error:`` line and exits 2. Any other exception is a bug of ours and prints
its traceback. The subclasses also derive from the matching built-in type, so ``except ValueError`` /
``except FileNotFoundError`` callers keep working.
"""

from __future__ import annotations


class UserError(Exception):
    """Something the user gave is wrong; the message says what and where."""


class InvalidInputError(UserError, ValueError):
    """A value, file content or config field is malformed."""


class MissingInputError(UserError, FileNotFoundError):
    """A file or folder the user named does not exist or lacks what is needed."""
