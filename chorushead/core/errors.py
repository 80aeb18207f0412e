"""The error types every floor raises. Their messages are what a person reads: one line, actionable."""
from __future__ import annotations


class StageError(Exception):
    """An error a person can act on; its message is what `chorushead status` shows."""


class BadInput(StageError):
    """The item itself is unusable (corrupt, too short, wrong number of faces...)."""


class MissingAsset(StageError):
    """A model or environment is not installed. Says what, where it was looked for, how to get it."""

    def __init__(self, what: str, looked: list[str] | str, how: str):
        looked = [looked] if isinstance(looked, str) else looked
        super().__init__(f"{what} not found (looked in: {', '.join(map(str, looked))}). How to get it: {how}")
        self.what, self.looked, self.how = what, looked, how
