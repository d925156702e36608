"""Errors the user sees. Each names the file (or parameter) and the problem in plain words."""
from __future__ import annotations


class PETDiffusionError(Exception):
    """Base class: any error whose message is meant for the user as it is."""


class InputError(PETDiffusionError):
    """Bad input: a file that is missing, unreadable, of the wrong kind, units or geometry.

    The message always names the offending file or parameter, so that a clinician in Slicer (who sees
    this text unchanged) knows what to fix.
    """

    def __init__(self, message: str, path: object | None = None):
        self.path = None if path is None else str(path)
        super().__init__(f"{self.path}: {message}" if self.path else message)


class MissingTagError(InputError):
    """A DICOM series lacks the tags a computation needs (for example SUV): lists them."""

    def __init__(self, missing: list[str], path: object | None = None, what: str = "SUV"):
        self.missing = list(missing)
        super().__init__(
            f"cannot compute {what}: missing DICOM tag(s) {', '.join(self.missing)}; "
            "supply them by hand (--weight-kg, --dose-mbq, --injection-time)",
            path,
        )


class ModelError(PETDiffusionError):
    """A model folder that is missing, tampered with (hash mismatch) or inconsistent with its card."""


class Cancelled(PETDiffusionError):
    """The user cancelled a running task."""
