"""Dependency handling of the Slicer panels, the parts that run without the Slicer application:
which requirements the library needs and which of them are missing from this Python."""
from __future__ import annotations

import sys
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "PETDiffusion"))

from PETDiffusionSlicer import dependencies  # noqa: E402
from PETDiffusionSlicer.resources import library_root, resource_path  # noqa: E402


def test_requirements_are_the_library_pyproject_dependencies():
    pinned = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    assert dependencies.requirements() == pinned
    assert any(r.startswith("torch") for r in pinned)


def test_distribution_and_import_names():
    assert dependencies.distribution_name("scikit-image==0.26.0") == "scikit-image"
    assert dependencies.import_name("scikit-image") == "skimage"
    assert dependencies.import_name("fpdf2") == "fpdf"
    assert dependencies.import_name("SimpleITK") == "SimpleITK"
    assert dependencies.import_name("pylibjpeg-openjpeg") == "openjpeg"


def test_nothing_missing_in_the_project_environment_and_a_missing_package_is_found():
    # this venv was installed from pyproject.toml: every requirement imports
    assert dependencies.missing_requirements() == []
    status = dependencies.ensure_dependencies()    # nothing to install, so no dialog is needed
    assert status.ok and not status.declined and status.message == ""
    assert dependencies.missing_requirements(["numpy==2.4.6", "no-such-package-petdiffusion==1.0"]) == \
        ["no-such-package-petdiffusion==1.0"]


def test_library_and_resources_are_found_from_the_source_checkout():
    assert library_root() == ROOT
    assert resource_path("UI/CTtoPETSynthesis.ui") == str(ROOT / "Resources" / "UI" / "CTtoPETSynthesis.ui")


def test_torch_minimum_is_the_pinned_torch_and_versions_are_read_from_the_installation():
    import torch
    assert dependencies.torch_minimum() == ">=2.13.0"
    assert dependencies.installed_version("torch").split("+")[0] == torch.__version__.split("+")[0]
    assert dependencies.pinned_version("numpy==2.4.6") == "2.4.6" and dependencies.pinned_version("numpy") is None
    # an installed package at another version than the pin is reported, never replaced
    assert dependencies.version_notes(["numpy==0.0.1"]) == [f"numpy {dependencies.installed_version('numpy')} (tested with 0.0.1)"]
    assert dependencies.version_notes(["no-such-package-petdiffusion==1.0"]) == []


def test_missing_pytorch_extension_is_a_plain_message_not_an_error():
    """Without the PyTorch extension (PyTorchUtils is not importable here) the status says what to do."""
    status = dependencies._install_torch("PET Denoise and Segment")
    assert not status.ok and not status.declined
    assert "install the PyTorch extension" in status.message and "Traceback" not in status.message


def test_declined_installation_is_recognised_by_the_exception_name():
    class InstallationAbortedError(Exception):
        pass
    assert dependencies._declined(InstallationAbortedError()) and not dependencies._declined(OSError())
