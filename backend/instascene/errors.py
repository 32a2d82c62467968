"""Errors a user can cause and fix.

Anything raised as `InstaSceneError` is shown by the CLI (and the service) as one
clear line naming the file and the problem, never as a traceback.
"""

from __future__ import annotations

import os


class InstaSceneError(Exception):
    """A problem with the user's input: a bad file, a missing folder, a wrong option."""

    def __init__(self, message: str, path: str | os.PathLike | None = None):
        self.path = os.fspath(path) if path is not None else None
        self.problem = message
        super().__init__(f"{self.path}: {message}" if self.path else message)
