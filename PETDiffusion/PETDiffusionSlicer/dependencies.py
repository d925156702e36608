"""The library's Python dependencies inside Slicer: checked before a run, installed after the user agrees.

Never at import time (ARCHITECTURE.md). The requirement list is ``Resources/requirements.txt`` (the
pinned ``[project.dependencies]`` of pyproject.toml; it ships with the packaged extension, which has
no pyproject.toml). PyTorch comes through the PyTorch extension's ``PyTorchUtils`` (a declared
dependency of this extension: ``EXTENSION_DEPENDS PyTorch``), which picks the wheel that fits the
machine's CUDA driver, or the CPU build, at least :data:`TORCH_MINIMUM`; everything else through
``slicer.packaging.pip_ensure`` (recent Slicer: checks, asks, installs with progress) or, on older
Slicer, ``slicer.util.pip_install`` after a confirmation dialog.

Packages Slicer already has (numpy, SimpleITK, pydicom, ...) are never replaced: a version other than
the tested pin is only logged. Once everything is found the check is cached for the session.
Declining an installation is not an error: :func:`ensure_dependencies` says so in its status.
"""
from __future__ import annotations

import importlib.metadata
import importlib.util
import logging
import re
from dataclasses import dataclass

import slicer

from .resources import library_root, resource_path

log = logging.getLogger(__name__)

REQUIREMENTS_FILE = "requirements.txt"     # Resources/requirements.txt

# Distribution name -> import name, for the packages whose names differ.
IMPORT_NAMES = {"SimpleITK": "SimpleITK", "scikit-image": "skimage", "fpdf2": "fpdf",
                "pylibjpeg-openjpeg": "openjpeg", "pyyaml": "yaml"}

_all_present = False    # set once every requirement was found (the check is then skipped)


@dataclass
class DependencyStatus:
    ok: bool                 # everything the library needs is importable now
    message: str = ""        # for the status line when not ok (plain words, no traceback)
    declined: bool = False   # the user said no to an installation (not an error)

    def __bool__(self) -> bool:
        return self.ok


def requirements() -> list[str]:
    """The library's pinned requirement strings (Resources/requirements.txt, comments left out)."""
    with open(resource_path(REQUIREMENTS_FILE), encoding="utf-8") as f:
        lines = [ln.split("#", 1)[0].strip() for ln in f]
    return [ln for ln in lines if ln]


def distribution_name(requirement: str) -> str:
    return re.split(r"[\s<>=!~;\[]", requirement.strip(), maxsplit=1)[0]


def pinned_version(requirement: str) -> str | None:
    m = re.search(r"==\s*([\w.+-]+)", requirement)
    return m.group(1) if m else None


def import_name(distribution: str) -> str:
    return IMPORT_NAMES.get(distribution, distribution.replace("-", "_").lower())


def _torch_pin() -> str:
    for req in requirements():
        if distribution_name(req) == "torch":
            return pinned_version(req) or "0"
    return "0"


def torch_minimum() -> str:
    """The smallest torch release the library is run with: the version pinned in requirements.txt
    (the one checked together with the other pins, pyproject.toml)."""
    return f">={_torch_pin()}"


def _version_tuple(version: str) -> tuple[int, ...]:
    return tuple(int(p) for p in re.findall(r"\d+", version.split("+")[0])[:3])


def installed_version(distribution: str) -> str | None:
    try:
        return importlib.metadata.version(distribution)
    except importlib.metadata.PackageNotFoundError:
        return None


def missing_requirements(reqs: list[str] | None = None) -> list[str]:
    """Requirements whose package cannot be imported in this Python, and torch when it is older than
    :func:`torch_minimum` (other versions are not compared: see :func:`version_notes`)."""
    out = []
    for req in reqs if reqs is not None else requirements():
        dist = distribution_name(req)
        if importlib.util.find_spec(import_name(dist)) is None:
            out.append(req)
        elif dist == "torch" and reqs is None:
            have = installed_version("torch")
            if have and _version_tuple(have) < _version_tuple(_torch_pin()):
                out.append(req)
    return out


def version_notes(reqs: list[str] | None = None) -> list[str]:
    """Installed packages whose version differs from the tested pin (left as they are)."""
    notes = []
    for req in reqs if reqs is not None else requirements():
        dist, pin = distribution_name(req), pinned_version(req)
        have = installed_version(dist)
        if pin and have and have.split("+")[0] != pin:
            notes.append(f"{dist} {have} (tested with {pin})")
    return notes


def _install_torch(requester: str) -> DependencyStatus:
    """PyTorch through the PyTorch extension (CUDA build that fits the driver, else CPU)."""
    try:
        import PyTorchUtils  # the "PyTorch" extension's module (EXTENSION_DEPENDS PyTorch)
    except ImportError:
        return DependencyStatus(False, f"{requester} needs PyTorch: install the PyTorch extension "
                                       "(View > Extensions Manager), restart Slicer and click Apply again.")
    torch = PyTorchUtils.PyTorchUtilsLogic().installTorch(askConfirmation=True,
                                                            torchVersionRequirement=torch_minimum())
    if torch is None:
        return DependencyStatus(False, "Not started: PyTorch was not installed (installation declined "
                                       "or cancelled). Click Apply to be asked again.", declined=True)
    return DependencyStatus(True)


def _declined(exc: BaseException) -> bool:
    name = type(exc).__name__.lower()
    return any(word in name for word in ("abort", "cancel", "declin"))


def ensure_dependencies(requester: str = "PETDiffusion") -> DependencyStatus:
    """Make sure the library can run; ask before installing anything.

    Called on the first Apply, never at import time. A user who declines gets a status with
    ``declined`` set and a plain message, not an exception.
    """
    global _all_present
    if _all_present:
        return DependencyStatus(True)
    missing = missing_requirements()
    if any(distribution_name(r) == "torch" for r in missing):
        status = _install_torch(requester)
        if not status.ok:
            return status
        importlib.invalidate_caches()
        missing = [r for r in missing if distribution_name(r) != "torch"]
    if missing:
        names = ", ".join(distribution_name(r) for r in missing)
        packaging = getattr(slicer, "packaging", None)
        try:
            if packaging is not None and hasattr(packaging, "pip_ensure"):
                packaging.pip_ensure(missing, requester=requester)
            else:
                if not slicer.util.confirmOkCancelDisplay(
                        f"{requester} needs these Python packages, which are not installed yet: {names}.\n\n"
                        "Install them now? This downloads from PyPI and can take several minutes.",
                        windowTitle=f"{requester}: install dependencies"):
                    return DependencyStatus(False, f"Not started: {names} not installed (installation "
                                                   "declined). Click Apply to be asked again.", declined=True)
                slicer.util.pip_install(missing)
        except Exception as exc:
            if _declined(exc):
                return DependencyStatus(False, f"Not started: {names} not installed (installation "
                                               "declined). Click Apply to be asked again.", declined=True)
            raise
        importlib.invalidate_caches()
    still = missing_requirements()
    if still:
        return DependencyStatus(False, "Not started: still missing after installation: "
                                       + ", ".join(distribution_name(r) for r in still))
    for note in version_notes():
        log.info("using the installed %s", note)
    _all_present = True
    return DependencyStatus(True)


def library_available() -> bool:
    return library_root() is not None or importlib.util.find_spec("PETDiffusionLib") is not None
