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


def icon_path(module_name: str) -> str | None:
    """``Resources/Icons/<module_name>.png`` if it is there (a module then shows its icon), else None."""
    try:
        return resource_path(f"Icons/{module_name}.png")
    except FileNotFoundError:
        return None


def library_root() -> Path | None:
    """The folder that holds the PETDiffusionLib package, when it ships beside the modules."""
    for root in _CANDIDATE_ROOTS:
        if (root / "PETDiffusionLib" / "__init__.py").is_file():
            return root
    return None
