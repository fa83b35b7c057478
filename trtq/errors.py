"""User-facing errors: one clear message that names the fix."""

from __future__ import annotations

__all__ = ["TrtqError"]


class TrtqError(Exception):
    """An error the user caused and can fix; the CLI prints it and exits with status 2.

    Args:
        message: what is wrong, naming the file, tensor or node at fault.
        fix: what the user should do about it.
    """

    def __init__(self, message: str, fix: str | None = None) -> None:
        self.message = message
        self.fix = fix
        super().__init__(f"{message} Fix: {fix}" if fix else message)
