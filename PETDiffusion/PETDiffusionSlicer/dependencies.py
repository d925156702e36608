"""The library's Python dependencies inside Slicer: checked before a run, installed after the user agrees.

Never at import time (ARCHITECTURE.md). PyTorch comes through the PyTorch extension's utilities when
that extension is installed (it picks the wheel that fits the machine's CUDA, or the CPU build);
everything else through ``slicer.packaging.pip_ensure`` (recent Slicer: checks, asks, installs with
progress) or, on older Slicer, ``slicer.util.pip_install`` after a confirmation dialog.
"""
from __future__ import annotations

import importlib.util
import logging
import re

import slicer

from .resources import library_root

log = logging.getLogger(__name__)

# Distribution name -> import name, for the packages whose names differ.
IMPORT_NAMES = {"SimpleITK": "SimpleITK", "scikit-image": "skimage", "fpdf2": "fpdf",
                "pylibjpeg-openjpeg": "openjpeg", "pyyaml": "yaml"}

# Used when no pyproject.toml is beside the module (an installed extension without the source tree).
FALLBACK_REQUIREMENTS = ["torch", "monai", "numpy", "scipy", "SimpleITK", "pydicom", "pylibjpeg",
                         "pylibjpeg-openjpeg", "highdicom", "safetensors", "scikit-image", "matplotlib",
                         "fpdf2", "tqdm", "psutil", "mambapy"]


def requirements() -> list[str]:
    """The library's requirement strings: [project.dependencies] of its pyproject.toml."""
    root = library_root()
    pyproject = root / "pyproject.toml" if root else None
    if pyproject is None or not pyproject.is_file():
        return list(FALLBACK_REQUIREMENTS)
    try:
        import tomllib
    except ImportError:  # Python < 3.11
        return list(FALLBACK_REQUIREMENTS)
    data = tomllib.loads(pyproject.read_text(encoding="utf-8"))
    return list(data.get("project", {}).get("dependencies", FALLBACK_REQUIREMENTS))


def distribution_name(requirement: str) -> str:
    return re.split(r"[\s<>=!~;\[]", requirement.strip(), maxsplit=1)[0]


def import_name(distribution: str) -> str:
    return IMPORT_NAMES.get(distribution, distribution.replace("-", "_").lower())


def missing_requirements(reqs: list[str] | None = None) -> list[str]:
    """Requirements whose package cannot be imported in this Python (versions are not checked here)."""
    out = []
    for req in reqs if reqs is not None else requirements():
        if importlib.util.find_spec(import_name(distribution_name(req))) is None:
            out.append(req)
    return out


def _torch_through_extension() -> bool:
    """Install PyTorch with the PyTorch extension when it is there. True if torch is now present."""
    try:
        import PyTorchUtils  # the "PyTorch" extension's module
    except ImportError:
        return False
    torch_logic = PyTorchUtils.PyTorchUtilsLogic()
    if not torch_logic.torchInstalled():
        torch_logic.installTorch(askConfirmation=True)
    return importlib.util.find_spec("torch") is not None


def ensure_dependencies(requester: str = "PETDiffusion") -> bool:
    """Make sure the library can run; ask before installing anything. True when all is present.

    Called on the first Apply, never at import time.
    """
    missing = missing_requirements()
    if not missing:
        return True
    if any(distribution_name(r) == "torch" for r in missing) and _torch_through_extension():
        missing = [r for r in missing if distribution_name(r) != "torch"]
    if not missing:
        return True
    packaging = getattr(slicer, "packaging", None)
    if packaging is not None and hasattr(packaging, "pip_ensure"):
        packaging.pip_ensure(missing, requester=requester)
    else:
        names = ", ".join(distribution_name(r) for r in missing)
        if not slicer.util.confirmOkCancelDisplay(
                f"{requester} needs these Python packages, which are not installed yet: {names}.\n\n"
                "Install them now? This downloads from PyPI and can take several minutes.",
                windowTitle=f"{requester}: install dependencies"):
            return False
        slicer.util.pip_install(missing)
    importlib.invalidate_caches()
    still = missing_requirements(missing)
    if still:
        log.warning("still missing after installation: %s", ", ".join(still))
    return not still


def library_available() -> bool:
    return library_root() is not None or importlib.util.find_spec("PETDiffusionLib") is not None
