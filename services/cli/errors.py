"""Exit codes and the one exception the commands raise to end with a message."""

from __future__ import annotations

__all__ = [
    "EXIT_CANCELLED",
    "EXIT_ERROR",
    "EXIT_INTERRUPTED",
    "EXIT_OK",
    "EXIT_USAGE",
    "CliError",
]

EXIT_OK = 0
EXIT_ERROR = 1  # the command failed, or the watched run failed
EXIT_USAGE = 2  # bad arguments or settings (argparse uses 2 as well)
EXIT_CANCELLED = 3  # the watched run was cancelled
EXIT_INTERRUPTED = 130  # Ctrl-C, as shells report it


class CliError(Exception):
    """Ends the command with a one-line message on stderr and `exit_code`."""

    def __init__(self, message: str, exit_code: int = EXIT_ERROR) -> None:
        super().__init__(message)
        self.exit_code = exit_code
