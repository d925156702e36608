"""The foundation commands: `demo`, `inspect`, `suv`."""
from __future__ import annotations

import re
import subprocess
import sys

import numpy as np
import pytest
import SimpleITK as sitk

from PETDiffusionLib.cli.demo import demo_steps, run_step
from PETDiffusionLib.cli.main import main
from PETDiffusionLib.io.images import read_image


def test_demo_dicom_step_finds_the_worked_suv_numbers(tmp_path):
    lines = run_step("PETDiffusionLib.io.demo:demo_dicom_suv", tmp_path)
    text = "\n".join(lines)
    decayed = float(re.search(r"decayed dose ([\d.]+) MBq", text).group(1))
    per_suv1 = float(re.search(r"SUV 1 = ([\d.]+) kBq/mL", text).group(1))
    assert decayed == pytest.approx(171.1, abs=0.1)  # PHYSICS.md §1 worked number
    assert per_suv1 == pytest.approx(2.44, abs=0.01)
    for region, suv in (("background", 1.0), ("hot sphere", 4.0), ("cold sphere", 0.2)):
        mean = float(re.search(rf"{region}: SUVbw mean ([\d.]+)", text).group(1))
        assert mean == pytest.approx(suv, abs=1e-3)
    assert "DERIVED/SECONDARY" in text and "SYNTHETIC" in text
    img = read_image(tmp_path / "pet_suv.nii.gz")
    assert img.GetMetaData("PETDiffusion.units") == "SUVbw"
    assert img.GetMetaData("PETDiffusion.synthetic") == "1"


def test_demo_command_runs_the_dicom_step_from_the_console_script(tmp_path):
    # the task steps (minutes on a CPU) run in `make demo` and in their own task tests
    assert demo_steps()[0][2] == "PETDiffusionLib.io.demo:demo_dicom_suv"
    done = subprocess.run([sys.executable, "-m", "PETDiffusionLib", "demo", "--step", "1", "--out",
                           str(tmp_path / "demo")], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert "[1/" in done.stdout and "SUV 1 = 2.44" in done.stdout
    assert "[2/" not in done.stdout


def test_demo_has_the_library_steps_then_one_step_per_registered_task():
    from PETDiffusionLib.tasks.registry import task_ids
    targets = [t for _, _, t in demo_steps()]
    assert targets[2:] == [f"task:{tid}" for tid in task_ids()]


def test_demo_refuses_a_step_it_does_not_have(tmp_path, capsys):
    assert main(["demo", "--step", str(len(demo_steps()) + 1), "--out", str(tmp_path)]) == 2
    assert "the demo has steps 1 to" in capsys.readouterr().err


def test_inspect_lists_modality_size_spacing_and_suv(shared_data, capsys):
    assert main(["inspect", str(shared_data / "petct_sts/dicom/STS_001")]) == 0
    out = capsys.readouterr().out
    pt = next(line for line in out.splitlines() if line.startswith("PT"))
    ct = next(line for line in out.splitlines() if line.startswith("CT"))
    assert "41x43x59" in pt and "4.69x4.69x3.27" in pt and "yes" in pt
    assert "198x202x59" in ct and "0.977x0.977x3.27" in ct
    assert "2 series" in out


def test_inspect_says_which_suv_tag_is_missing(shared_data, tmp_path, capsys):
    import pydicom
    src = shared_data / "suv_dro_ibsi/DRO/DRO_0_0/PT"
    for f in sorted(src.glob("*.dcm")):
        ds = pydicom.dcmread(f)
        del ds.PatientWeight
        ds.save_as(tmp_path / f.name)
    assert main(["inspect", str(tmp_path)]) == 0
    assert "no: missing PatientWeight (0010,1030)" in capsys.readouterr().out


def test_suv_command_writes_suv_and_prints_factor_and_rule(shared_data, tmp_path, capsys):
    out = tmp_path / "pet_suv.nii.gz"
    assert main(["suv", str(shared_data / "suv_dro_ibsi/DRO/DRO_0_0/PT"), "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    factor = float(re.search(r"SUVbw factor: ([\d.e-]+)", printed).group(1))
    # 70 kg, 368.08 MBq decayed 60 min with T½ 6586.2 s (the DRO's headers)
    assert factor == pytest.approx(70_000 / (368.08e6 * 2 ** (-3600 / 6586.2)), rel=1e-6)
    assert "rule: Units BQML; DecayCorrection START" in printed
    img = read_image(out)
    assert img.GetMetaData("PETDiffusion.units") == "SUVbw"
    assert float(np.max(sitk.GetArrayFromImage(img))) == pytest.approx(4.0, abs=1e-3)


def test_suv_command_lean_body_mass(shared_data, tmp_path, capsys):
    out = tmp_path / "sul.nii.gz"
    assert main(["suv", str(shared_data / "suv_dro_ibsi/DRO/DRO_0_0/PT"), "--out", str(out),
                 "--type", "lbm"]) == 0
    assert "SUVlbm factor" in capsys.readouterr().out
    assert read_image(out).GetMetaData("PETDiffusion.units") == "SUVlbm"
