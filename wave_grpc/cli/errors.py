"""The two ways a command fails, each with its own exit code (wave_grpc/cli/entry.py maps them)."""

from __future__ import annotations


class CliError(Exception):
    """A usage error (what was typed cannot work): printed without a traceback, exit code 2."""


class RequestFailed(Exception):
    """The request was made and failed (the service said no, or could not be reached): exit code 1."""

    def __init__(self, message: str, code: str = "") -> None:
        super().__init__(message)
        self.code = code
