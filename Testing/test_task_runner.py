"""tasks/runner.py: the runner owns the output folder (docs/ARCHITECTURE.md, "A task")."""
from __future__ import annotations

import json

import pydicom
import pytest

from PETDiffusionLib.tasks.base import Output, TaskSpec
from PETDiffusionLib.tasks.runner import _check_written, run_task

SPEC = TaskSpec(id="toy", title="toy", paper="-", description="-", inputs=(), parameters=(),
                outputs=(Output("pet", "pet.nii.gz", "volume", "a volume"),
                         Output("table", "table.csv", "table", "a table"),
                         Output("extra", "extra.json", "json", "optional", optional=True)))


def test_the_staging_folder_must_hold_exactly_the_files_the_spec_names(tmp_path):
    for name in ("pet.nii.gz", "table.csv"):
        (tmp_path / name).write_text("x")
    written = {"pet": tmp_path / "pet.nii.gz", "table": tmp_path / "table.csv"}
    outputs = _check_written(SPEC, tmp_path, written)
    assert set(outputs) == {"pet", "table"} and outputs["pet"]["file"] == "pet.nii.gz"
    (tmp_path / "scratch.npy").write_text("x")
    with pytest.raises(RuntimeError, match=r"left files its spec does not name: \['scratch.npy'\]"):
        _check_written(SPEC, tmp_path, written)
    (tmp_path / "scratch.npy").unlink()
    with pytest.raises(RuntimeError, match="did not write its output table"):
        _check_written(SPEC, tmp_path, {"pet": tmp_path / "pet.nii.gz"})
    with pytest.raises(RuntimeError, match="wrote table as other.csv"):
        _check_written(SPEC, tmp_path, {**written, "table": tmp_path / "other.csv"})


def test_a_reader_warning_about_an_input_travels_into_the_manifest(shared_data, tmp_path):
    """The IBSI DRO_0_0 PET with one slice moved by 0.12 mm (steps 3.88 / 4.12 mm, 3 % off) is read
    onto a regular grid with a warning, which the task's manifest records."""
    src = shared_data / "suv_dro_ibsi/DRO/DRO_0_0/PT"
    dst = tmp_path / "pet"
    dst.mkdir()
    files = sorted(src.glob("*.dcm"))
    datasets = [pydicom.dcmread(f) for f in files]
    datasets.sort(key=lambda ds: float(ds.ImagePositionPatient[2]))
    for i, ds in enumerate(datasets):
        if i == 10:
            pos = [float(v) for v in ds.ImagePositionPatient]
            ds.ImagePositionPatient = [pos[0], pos[1], pos[2] + 0.12]
        ds.save_as(dst / f"{i:03d}.dcm")
    manifest = json.loads(run_task("denoise-segment", {"pet": str(dst)}, {},
                                   tmp_path / "out").read_text())
    warnings = manifest["input_warnings"]["pet"]
    assert any("irregular slice spacing" in w for w in warnings), warnings
    on_disk = {p.name for p in (tmp_path / "out").iterdir()}
    assert on_disk == {o["file"] for o in manifest["outputs"].values()} | {"manifest.json"}
