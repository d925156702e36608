"""Sample data for a first run, registered in Slicer's Sample Data module (category "PETDiffusion"):

- **PETDiffusion phantom low-count PET/CT**: made on this computer by the library's phantom simulator
  (``petdiffusion phantom``, seed 0: the same case every time; 64 x 64 x 80 voxels of 8 x 8 x 10 mm,
  a 10 % count PET in SUVbw and its CT in HU). Made by this project: Apache-2.0, like the code.
  Try PET Denoise and Segment on it (and CT to PET Synthesis on its CT).
- **Sarcoma STS_001 PET/CT (IBSI/TCIA)**: a real FDG PET/CT of a soft-tissue sarcoma patient, cropped
  5 cm around the tumour by the IBSI (theibsi/data_sets, ``ibsi_validation/nifti/STS_001``), PET in
  SUVbw (Units GML), CT in HU. CC BY 3.0: cite Vallieres et al. 2015 (TCIA,
  doi:10.7937/K9/TCIA.2015.7GO2GSKS) and Clark et al. 2013 (TCIA). Downloaded once, checked by SHA-256.

Registration needs the SampleData module (desktop Slicer); :data:`SAMPLES` and
:func:`make_phantom_pair` are plain data and a library run, tested outside Slicer.
"""
from __future__ import annotations

import json
import logging
import tempfile
from dataclasses import dataclass
from pathlib import Path

import slicer

from . import nodes
from .resources import icon_path
from .runner import TaskError, last_error_line, run_library

log = logging.getLogger(__name__)

CATEGORY = "PETDiffusion"
IBSI_REVISION = "6da96021"   # theibsi/data_sets revision the project's copy comes from (shared/data MANIFEST.md)
IBSI_BASE = f"https://github.com/theibsi/data_sets/raw/{IBSI_REVISION}/ibsi_validation/nifti/STS_001"


@dataclass(frozen=True)
class SampleFile:
    file_name: str
    node_name: str
    units: str          # set on the loaded node (PETDiffusion.units): the panels then recognise it
    uri: str = ""       # empty: made on this computer (phantom)
    sha256: str = ""


@dataclass(frozen=True)
class Sample:
    name: str
    files: tuple[SampleFile, ...]
    licence: str
    citation: str = ""


PHANTOM = Sample(
    name="PETDiffusion phantom low-count PET/CT",
    files=(SampleFile("pet_low_10.nii.gz", "Phantom low-count PET (10 %)", "SUVbw"),
           SampleFile("ct.nii.gz", "Phantom CT", "HU")),
    licence="Apache-2.0 (made by the PETDiffusion phantom simulator on this computer)")

SARCOMA = Sample(
    name="Sarcoma STS_001 PET/CT (IBSI/TCIA)",
    files=(SampleFile("STS_001_PET_image.nii.gz", "STS_001 PET", "SUVbw", f"{IBSI_BASE}/PET_image.nii.gz",
                      "358300bb60fb5a21e914e833afdda4d16072bd25cbd0c0f9e38a7a64726af31a"),
           SampleFile("STS_001_CT_image.nii.gz", "STS_001 CT", "HU", f"{IBSI_BASE}/CT_image.nii.gz",
                      "6751295745f056c0b25e3b97fc5d9106d944b715db2df3f1a408923b9c36cf5f")),
    licence="CC BY 3.0 (The Cancer Imaging Archive; IBSI crop)",
    citation="Vallieres M et al. 2015, TCIA Soft-tissue Sarcoma, doi:10.7937/K9/TCIA.2015.7GO2GSKS; "
             "Clark K et al. 2013, J Digit Imaging 26:1045")

SAMPLES = (PHANTOM, SARCOMA)
PHANTOM_ARGS = ["phantom", "--n", "1", "--seed", "0", "--size", "64", "--slices", "80", "--images", "low",
                "--fractions", "10", "--threads", "1"]


def make_phantom_pair(folder: str | Path, timeout: float = 600.0) -> dict[str, Path]:
    """Make the phantom sample with the library (``petdiffusion phantom``); file name -> path."""
    folder = Path(folder)
    code, output = run_library(PHANTOM_ARGS + ["--out", str(folder)], timeout=timeout)
    if code != 0:
        raise TaskError(last_error_line(output) or "the phantom simulator failed")
    case = folder / "case_0000"
    paths = {f.file_name: case / f.file_name for f in PHANTOM.files}
    missing = [name for name, p in paths.items() if not p.is_file()]
    if missing:
        raise TaskError(f"the phantom simulator wrote no {', '.join(missing)} in {case}")
    return paths


def _load(sample_file: SampleFile, path: Path):
    node = nodes.load_volume_file(path, sample_file.node_name)
    nodes.set_volume_units(node, sample_file.units)
    return node


def download_phantom(source=None) -> list:
    """Sample Data's custom downloader for the phantom: make it, load it with its units."""
    folder = Path(tempfile.mkdtemp(prefix="PETDiffusion-phantom-"))
    paths = make_phantom_pair(folder)
    return [_load(f, paths[f.file_name]) for f in PHANTOM.files]


def download_sarcoma(source=None) -> list:
    """Sample Data's custom downloader for the sarcoma pair: download into Slicer's cache (SHA-256
    checked), load with its units."""
    import SampleData   # desktop Slicer's Sample Data module
    logic = SampleData.SampleDataLogic()
    loaded = []
    for f in SARCOMA.files:
        path = logic.downloadFileIntoCache(f.uri, f.file_name, f"SHA256:{f.sha256}")
        loaded.append(_load(f, Path(path)))
    return loaded


def register() -> None:
    """Add both samples to the Sample Data module (desktop Slicer; called once after startup)."""
    import SampleData
    thumbnail = icon_path("PETDenoiseSegment")
    for sample, downloader in ((PHANTOM, download_phantom), (SARCOMA, download_sarcoma)):
        SampleData.SampleDataLogic.registerCustomSampleDataSource(
            category=CATEGORY, sampleName=sample.name, thumbnailFileName=thumbnail,
            uris=[f.uri or None for f in sample.files], fileNames=[f.file_name for f in sample.files],
            nodeNames=[f.node_name for f in sample.files],
            checksums=[f"SHA256:{f.sha256}" if f.sha256 else None for f in sample.files],
            customDownloader=downloader)


def register_after_startup() -> None:
    """Register once the application has started (the Sample Data module exists then)."""
    app = getattr(slicer, "app", None)
    if app is None:
        return

    def _register():
        try:
            register()
        except Exception as exc:   # sample data is a convenience: never break the module for it
            log.warning("PETDiffusion sample data not registered: %s", exc)
    app.connect("startupCompleted()", _register)


def sample_manifest() -> str:
    """The samples, their files, licences and citations as JSON (for the tutorial and tests)."""
    return json.dumps([{"name": s.name, "licence": s.licence, "citation": s.citation,
                        "files": [f.__dict__ for f in s.files]} for s in SAMPLES], indent=1)
