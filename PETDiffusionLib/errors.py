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


class Terminated(KeyboardInterrupt):
    """The process was asked to stop by a signal (SIGTERM from Slicer's cancel or a scheduler).

    A KeyboardInterrupt, so that every ``finally`` and ``except BaseException`` that cleans up after
    Ctrl-C (staging folders, temporary files) runs the same way, and no ``except Exception`` in
    library code swallows it.
    """

    def __init__(self, signum: int):
        self.signum = signum
        super().__init__(f"terminated by signal {signum}")


def itk_reason(exc: BaseException) -> str:
    """The useful part of an ITK/SimpleITK error message.

    ITK messages start with the C++ source file and line ("Exception thrown in SimpleITK
    ImageFileReader_Execute: /.../itkNiftiImageIO.cxx:2135:") and put the reason on the following
    lines ("ITK ERROR: ITK only supports orthonormal direction cosines..."): keep the reason lines,
    without their "ITK ERROR:" / "sitk::ERROR:" prefix.
    """
    lines = [ln.strip() for ln in str(exc).strip().splitlines() if ln.strip()]
    reasons = []
    for ln in lines:
        for prefix in ("ITK ERROR:", "sitk::ERROR:"):
            if prefix in ln:
                ln = ln.split(prefix, 1)[1].strip()
                break
        else:
            if ln.startswith("Exception thrown in") or ln.rstrip(":").endswith((".cxx", ".h", ".hxx")) \
                    or ln.rstrip(":").rsplit(":", 1)[0].endswith((".cxx", ".h", ".hxx")):
                continue
        # ITK prints the reporting object's name on a line of its own ("NiftiImageIO (0x...)")
        if "(0x" in ln and ln.endswith(")") and len(ln.split()) <= 2:
            continue
        reasons.append(ln)
    return " ".join(reasons) if reasons else (lines[-1] if lines else type(exc).__name__)


def os_error_message(exc: OSError) -> str:
    """A user-facing sentence for an OS error: the file, the problem, what to do."""
    name = exc.filename or ""
    problem = exc.strerror or str(exc)
    advice = {
        "PermissionError": "check that you may read it (inputs) or write in its folder (outputs)",
        "FileNotFoundError": "check the path",
        "FileExistsError": "choose another name or remove it",
        "IsADirectoryError": "give a file name, not a folder",
        "NotADirectoryError": "a part of the path is a file, not a folder",
    }.get(type(exc).__name__, "check the path, the permissions and the free disk space")
    where = f"{name}: " if name else ""
    return f"{where}{problem}; {advice}"
