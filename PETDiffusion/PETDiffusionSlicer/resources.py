"""Where this extension's resources and the library live, in a source checkout and in a built extension.

Source checkout (Slicer "Additional module paths" -> PETDiffusion/): resources are at
``<checkout>/Resources`` and the library at ``<checkout>/PETDiffusionLib``. Built extension: CMake
copies both beside the module files (``<qt-scripted-modules>/Resources``, ``.../PETDiffusionLib``).
"""
from __future__ import annotations

from pathlib import Path

MODULE_DIR = Path(__file__).resolve().parents[1]          # folder holding the module .py files
_CANDIDATE_ROOTS = (MODULE_DIR, MODULE_DIR.parent)


def resource_path(relative: str) -> str:
    """Absolute path of ``Resources/<relative>`` (e.g. "UI/PETDenoiseSegment.ui")."""
    for root in _CANDIDATE_ROOTS:
        path = root / "Resources" / relative
        if path.exists():
            return str(path)
    raise FileNotFoundError(f"PETDiffusion resource not found: Resources/{relative} "
                            f"(looked in {', '.join(str(r) for r in _CANDIDATE_ROOTS)})")


def library_root() -> Path | None:
    """The folder that holds the PETDiffusionLib package, when it ships beside the modules."""
    for root in _CANDIDATE_ROOTS:
        if (root / "PETDiffusionLib" / "__init__.py").is_file():
            return root
    return None
