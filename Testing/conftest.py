"""Shared test fixtures. Real third-party data lives at ../shared/data relative to the project root
(see its MANIFEST.md); tests that need it fail, never skip, when it is missing."""
from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

PROJECT_ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = (PROJECT_ROOT / ".." / "shared" / "data").resolve()

# Tests share a 2-core machine: keep torch from oversubscribing it.
torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """The real-data folder; fails loudly (not skips) if it is absent."""
    if not (SHARED_DATA / "MANIFEST.md").is_file():
        pytest.fail(f"real test data not found at {SHARED_DATA} (expected ../shared/data relative to "
                    f"the project root {PROJECT_ROOT}, with its MANIFEST.md)")
    return SHARED_DATA


@pytest.fixture(scope="session")
def project_root() -> Path:
    return PROJECT_ROOT


@pytest.fixture()
def scene():
    """A fresh headless MRML scene (slicer-core) with the logics the Slicer panels use."""
    import sys
    sys.path.insert(0, str(PROJECT_ROOT / "PETDiffusion"))
    from PETDiffusionSlicer import nodes
    sc = nodes.new_headless_scene()
    yield sc
    sc.Clear(1)
