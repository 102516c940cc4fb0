"""The errors the course raises on purpose for a user's mistake; the CLI prints these in one line, no traceback.

Every other exception is a bug (ours or a library's) and keeps its traceback. Each class also derives from the
built-in error a caller would expect (``ValueError``, ``FileNotFoundError``), so ``except ValueError`` still works.
"""


class UserError(Exception):
    """A mistake in the command line, a config, a file or the environment, explained by the message."""


class ConfigError(UserError, ValueError):
    """A setting has a value that is not allowed; the message names the key, the value and what is allowed."""


class MissingFileError(UserError, FileNotFoundError):
    """A file or folder the user pointed at does not exist or is not what it should be."""


class AssetError(UserError, RuntimeError):
    """A model or data set cannot be found locally and cannot be fetched."""


class NonFiniteError(UserError, RuntimeError):
    """Training stopped because the loss or the gradient norm stopped being finite (the message lists causes)."""


class MissingDependencyError(UserError, ImportError):
    """An optional package a command needs is not installed; the message says how to install it."""


class IndexCorruptError(UserError, ValueError):
    """A saved index whose parts disagree (a save that crashed or raced): it must be rebuilt, not reused.

    Args:
        reason: what disagrees, naming the folder and the files.
        fix: what to run to rebuild it (appended to the message).
    """

    def __init__(self, reason: str, fix: str = "") -> None:
        super().__init__(f"{reason}; {fix}" if fix else reason)
        self.reason = reason
