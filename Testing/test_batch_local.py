"""`petdiffusion batch` with the local engine (issue 20): the cohort table is checked against the
task's spec before anything runs; each study writes what `petdiffusion run` writes; a failing
study fails alone; summary.csv carries status, worker and the task's headline figures; the same
command again skips every complete study and re-runs an incomplete one.

Real data: small FDG PET crops of the IBSI/TCIA soft-tissue sarcoma patients
(../shared/data/petct_sts_more, SUVbw NIfTI; MANIFEST.md), run with the shipped AMDiff model.
"""
from __future__ import annotations

import csv
import json
import os
import shutil
import socket
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from PETDiffusionLib.batch import headline
from PETDiffusionLib.batch.cohort import complete_manifest, missing_inputs, read_cohort
from PETDiffusionLib.batch.ray_engine import worker_resources
from PETDiffusionLib.batch.summary import SummaryTable
from PETDiffusionLib.cli.main import main
from PETDiffusionLib.errors import InputError
from PETDiffusionLib.tasks.registry import task_spec
from PETDiffusionLib.tasks.runner import run_task

DS = task_spec("denoise-segment")
CTP = task_spec("ct-to-pet")


def write_csv(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    return path


def read_summary(out: Path) -> dict[str, dict[str, str]]:
    with (out / "summary.csv").open(newline="", encoding="utf-8") as fh:
        return {row["id"]: row for row in csv.DictReader(fh)}


def sts(shared: Path, case: str, image: str = "PET_image.nii.gz") -> Path:
    return shared / "petct_sts_more" / case / image


# ------------------------------------------------------------------------------ the cohort table
def test_a_cohort_row_gives_the_studys_inputs_and_parameters(tmp_path):
    (tmp_path / "images").mkdir()
    csv_path = write_csv(tmp_path / "cohort.csv",
                         "id,pet,ct,steps,Lesion-Threshold\n"
                         "A,images/a.nii.gz,,3,\n"
                         "\n"
                         "B,/data/b.nii.gz,/data/b_ct.nii.gz,,0.4\n")
    a, b = read_cohort(csv_path, DS)
    assert (a.id, a.line, b.id, b.line) == ("A", 2, "B", 4)
    assert a.inputs == {"pet": str(tmp_path / "images" / "a.nii.gz")}  # relative to the CSV
    assert a.params == {"steps": 3}                                     # empty cells: defaults
    assert b.inputs == {"pet": "/data/b.nii.gz", "ct": "/data/b_ct.nii.gz"}
    assert b.params == {"lesion_threshold": 0.4}                        # dashes, any case
    assert missing_inputs(a) == f"line 2, column pet: {tmp_path / 'images' / 'a.nii.gz'} does not exist"


@pytest.mark.parametrize("text, message", [
    ("id,pet,suv\nA,a.nii.gz,1\n",
     "line 1, column 3 'suv': not a column of task denoise-segment; the columns are id, pet and "
     "optionally ct, steps"),
    ("pet\na.nii.gz\n", "line 1: no 'id' column"),
    ("id,ct\nA,a.nii.gz\n", "line 1: no 'pet' column, which task denoise-segment needs"),
    ("id,pet,pet\nA,a,b\n", "line 1: the column 'pet' appears twice"),
    ("id,pet\nA,a.nii.gz\n,b.nii.gz\n", "line 3, column id: empty"),
    ("id,pet\nA,a.nii.gz\nA,b.nii.gz\n", "line 3, column id: the id 'A' is also on line 2"),
    ("id,pet\n../up,a.nii.gz\n", "line 2, column id: '../up' is not usable as a folder name"),
    ("id,pet\nA,\n", "line 2 (id A), column pet: empty, but task denoise-segment needs it"),
    ("id,pet,steps\nA,a.nii.gz,999\n",
     "line 2 (id A), column steps: parameter steps: 999 is above the maximum 250"),
    ("id,pet,sampler\nA,a.nii.gz,euler\n",
     "line 2 (id A), column sampler: parameter sampler: 'euler' is not one of ddim, ddpm, dpmpp2m"),
    ("id,pet\nA,a.nii.gz,extra\n", "line 2: 3 cells but the header names 2 columns"),
    ("id,pet\n", "the cohort CSV has a header but no studies"),
    ("", "the cohort CSV is empty"),
])
def test_a_bad_cohort_table_is_refused_naming_the_file_line_and_column(tmp_path, text, message):
    csv_path = write_csv(tmp_path / "my_cohort.csv", text)
    with pytest.raises(InputError) as err:
        read_cohort(csv_path, DS)
    assert str(err.value).startswith(f"{csv_path}: ")
    assert message in str(err.value)


def test_the_cli_refuses_a_bad_table_before_running_anything(tmp_path, capsys):
    csv_path = write_csv(tmp_path / "c.csv", "id,pet,dose\nA,a.nii.gz,3\n")
    rc = main(["batch", "denoise-segment", "--inputs", str(csv_path), "--out", str(tmp_path / "out"),
               "--progress", "none"])
    assert rc == 2
    assert "column 3 'dose': not a column of task denoise-segment" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("extra, message", [
    (["--workers", "2"], "--workers 2: --engine local runs one worker in this process"),
    (["--address", "127.0.0.1:6379"], "--address joins a Ray cluster: it needs --engine ray"),
    (["--workers", "0", "--engine", "ray"], "--workers 0: must be at least 1"),
])
def test_engine_options_that_cannot_work_are_refused(tmp_path, capsys, extra, message):
    csv_path = write_csv(tmp_path / "c.csv", "id,pet\nA,a.nii.gz\n")
    rc = main(["batch", "denoise-segment", "--inputs", str(csv_path), "--out", str(tmp_path / "o"),
               "--progress", "none", *extra])
    assert rc == 2
    assert message in capsys.readouterr().err


# ------------------------------------------------------------------ summary, manifest, headline
def test_summary_csv_is_rewritten_whole_in_cohort_order_as_studies_finish(tmp_path):
    table = SummaryTable(tmp_path / "summary.csv", ["a", "b", "c"], ["tmtv_ml"])
    table.add({"id": "c", "status": "failed", "seconds": 1.5, "engine": "local",
               "error": "line 4, column pet: x\ndoes not exist"})
    assert (tmp_path / "summary.csv").read_text() == (
        "id,status,seconds,engine,worker,error,tmtv_ml\n"
        'c,failed,1.5,local,,"line 4, column pet: x | does not exist",\n')  # one line per study
    table.add({"id": "a", "status": "ok", "seconds": 2.0, "engine": "local", "worker": "h:1",
               "tmtv_ml": 12.3456789})
    assert [r["id"] for r in csv.DictReader((tmp_path / "summary.csv").open())] == ["a", "c"]
    assert read_summary(tmp_path)["a"]["tmtv_ml"] == "12.3457"
    assert table.counts() == {"ok": 1, "skipped": 0, "failed": 1}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["summary.csv"]  # no temporary left
    with pytest.raises(ValueError, match="status 'running' is not one of ok, skipped, failed"):
        table.add({"id": "b", "status": "running"})


def test_a_manifest_is_complete_only_for_this_task_with_every_listed_file(tmp_path):
    study = tmp_path / "S1"
    study.mkdir()
    (study / "pet_synthetic.nii.gz").write_bytes(b"x")
    manifest = {"task": "ct-to-pet", "kvp": 100.0,
                "outputs": {"pet_synthetic": {"file": "pet_synthetic.nii.gz"},
                            "attention_map": {"file": "attention_map.nii.gz"}}}
    (study / "manifest.json").write_text(json.dumps(manifest))
    assert complete_manifest(study, "ct-to-pet") is None            # attention_map.nii.gz missing
    (study / "attention_map.nii.gz").write_bytes(b"x")
    assert complete_manifest(study, "ct-to-pet") == manifest
    assert complete_manifest(study, "denoise-segment") is None      # another task's folder
    (study / "manifest.json").write_text('{"task": "ct-to-pet", "outp')
    assert complete_manifest(study, "ct-to-pet") is None            # cut short
    assert complete_manifest(tmp_path / "absent", "ct-to-pet") is None
    # ct-to-pet without an organ map writes no organs.csv: its organ figures stay empty
    assert headline.read(CTP, study, manifest) == {"kvp": 100.0, "liver_suv_mean": None,
                                                  "aorta_suv_mean": None, "spleen_suv_mean": None}


def test_headline_keys_name_their_summary_columns():
    assert headline.column_name("summary_json:tmtv_ml") == "tmtv_ml"
    assert headline.column_name("organs_csv:liver:suv_mean") == "liver_suv_mean"
    assert headline.columns(DS)[:3] == ["tmtv_ml", "ttlg", "lesion_count"]
    with pytest.raises(ValueError, match="expected OUTPUT:FIELD or OUTPUT:ROW:COLUMN"):
        headline.column_name("tmtv_ml")


# ------------------------------------------------------------------- a real cohort, run twice
@pytest.fixture(scope="module")
def cohort_run(tmp_path_factory, shared_data):
    """Two real sarcoma PETs, a CT given as the PET (fails in the task's input check) and a missing
    file, through the real CLI with the local engine; then the same command again."""
    root = tmp_path_factory.mktemp("batch_local")
    csv_path = write_csv(root / "cohort.csv",
                         "id,pet\n"
                         f"STS_015,{sts(shared_data, 'STS_015')}\n"
                         f"STS_014,{sts(shared_data, 'STS_014')}\n"
                         f"ct_as_pet,{sts(shared_data, 'STS_014', 'CT_image.nii.gz')}\n"
                         f"missing,{root / 'nowhere' / 'PET_image.nii.gz'}\n")
    out = root / "out"
    argv = ["batch", "denoise-segment", "--inputs", str(csv_path), "--out", str(out),
            "--engine", "local", "--device", "cpu", "--progress", "none"]
    rc1 = main(argv)
    first = read_summary(out)
    mtimes = {s: (out / s / "manifest.json").stat().st_mtime_ns for s in ("STS_015", "STS_014")}
    rc2 = main(argv)
    return {"root": root, "out": out, "csv": csv_path, "argv": argv, "rc1": rc1, "first": first,
            "rc2": rc2, "second": read_summary(out), "mtimes": mtimes}


def test_each_study_runs_alone_and_a_failure_stays_with_its_study(cohort_run, shared_data):
    first = cohort_run["first"]
    assert cohort_run["rc1"] == 1                       # one or more failed: non-zero exit
    assert list(first) == ["STS_015", "STS_014", "ct_as_pet", "missing"]
    assert {k: r["status"] for k, r in first.items()} == {
        "STS_015": "ok", "STS_014": "ok", "ct_as_pet": "failed", "missing": "failed"}
    assert {r["engine"] for r in first.values()} == {"local"}
    me = f"{socket.gethostname()}:{os.getpid()}"        # the local engine's one worker: us
    assert first["STS_015"]["worker"] == first["STS_014"]["worker"] == first["ct_as_pet"]["worker"] == me
    assert first["ct_as_pet"]["error"].startswith(             # the task's own input check
        f"{sts(shared_data, 'STS_014', 'CT_image.nii.gz')}: values down to -1000 look like a CT in HU")
    assert first["missing"]["error"] == (f"line 5, column pet: {cohort_run['root']}/nowhere/"
                                         "PET_image.nii.gz does not exist")
    assert float(first["STS_015"]["seconds"]) > 0 and first["STS_015"]["error"] == ""
    out = cohort_run["out"]
    assert sorted(p.name for p in out.iterdir()) == ["STS_014", "STS_015", "summary.csv"]


def test_a_study_folder_holds_what_petdiffusion_run_writes(cohort_run, shared_data, tmp_path):
    single = run_task("denoise-segment", {"pet": str(sts(shared_data, "STS_015"))}, {},
                      tmp_path / "single", device="cpu").parent
    batch = cohort_run["out"] / "STS_015"
    assert sorted(p.name for p in batch.iterdir()) == sorted(p.name for p in single.iterdir())
    for name in ("pet_denoised.nii.gz", "lesions.nii.gz", "organs.nii.gz"):
        a = sitk.GetArrayFromImage(sitk.ReadImage(str(batch / name)))
        b = sitk.GetArrayFromImage(sitk.ReadImage(str(single / name)))
        assert np.array_equal(a, b), name
    manifest = json.loads((batch / "manifest.json").read_text())
    assert manifest["task"] == "denoise-segment"
    assert manifest["inputs"] == {"pet": str(sts(shared_data, "STS_015"))}


def test_summary_headline_figures_are_the_studys_own(cohort_run):
    for sid in ("STS_015", "STS_014"):
        row = cohort_run["first"][sid]
        folder = cohort_run["out"] / sid
        summary = json.loads((folder / "summary.json").read_text())
        assert float(row["tmtv_ml"]) == pytest.approx(summary["tmtv_ml"], rel=1e-5, abs=1e-9)
        assert float(row["ttlg"]) == pytest.approx(summary["ttlg"], rel=1e-5, abs=1e-9)
        assert int(row["lesion_count"]) == summary["lesion_count"]
        organs = {r["organ"]: r for r in csv.DictReader((folder / "organs.csv").open())}
        for organ in ("liver", "aorta", "spleen"):
            want = organs[organ]["suv_mean"]
            got = row[f"{organ}_suv_mean"]
            assert (got == "" if want == "" else float(got) == pytest.approx(float(want), rel=1e-5))
    for sid in ("ct_as_pet", "missing"):
        assert cohort_run["first"][sid]["tmtv_ml"] == ""


def test_the_same_command_again_skips_complete_studies_and_retries_failed_ones(cohort_run):
    first, second, out = cohort_run["first"], cohort_run["second"], cohort_run["out"]
    assert cohort_run["rc2"] == 1
    assert {k: r["status"] for k, r in second.items()} == {
        "STS_015": "skipped", "STS_014": "skipped", "ct_as_pet": "failed", "missing": "failed"}
    for sid in ("STS_015", "STS_014"):
        assert (out / sid / "manifest.json").stat().st_mtime_ns == cohort_run["mtimes"][sid]
        assert second[sid]["seconds"] == "" and second[sid]["worker"] == ""
        for col in headline.columns(DS):              # figures read back from the study's files
            assert second[sid][col] == first[sid][col]
    assert second["ct_as_pet"]["error"] == first["ct_as_pet"]["error"]


def test_a_study_missing_an_output_is_run_again(cohort_run, tmp_path):
    out = tmp_path / "out"
    shutil.copytree(cohort_run["out"], out)
    (out / "STS_014" / "organs.csv").unlink()
    argv = [a if a != str(cohort_run["out"]) else str(out) for a in cohort_run["argv"]]
    assert main(argv) == 1
    rows = read_summary(out)
    assert rows["STS_014"]["status"] == "ok" and rows["STS_015"]["status"] == "skipped"
    assert (out / "STS_014" / "organs.csv").is_file()
    assert complete_manifest(out / "STS_014", "denoise-segment") is not None


# ------------------------------------------------------------- what each Ray worker declares
@pytest.mark.parametrize("device, cluster, gpus, want", [
    ("auto", {"CPU": 16.0, "GPU": 4.0}, None, (1.0, 1.0, "cuda")),   # a GPU each, where there are GPUs
    ("auto", {"CPU": 2.0}, None, (1.0, 0.0, "cpu")),
    ("cpu", {"CPU": 16.0, "GPU": 4.0}, None, (1.0, 0.0, "cpu")),     # CPU workers on a GPU cluster
    ("cuda:1", {"CPU": 16.0, "GPU": 4.0}, 0.5, (1.0, 0.5, "cuda")),  # Ray picks the GPU: cuda:0 of its own
])
def test_a_ray_worker_declares_the_resources_its_device_needs(device, cluster, gpus, want):
    assert worker_resources(device, cluster, 1.0, gpus) == want


def test_cuda_workers_on_a_cluster_without_gpus_are_refused():
    with pytest.raises(InputError, match="--device cuda: the Ray cluster has no GPU"):
        worker_resources("cuda", {"CPU": 8.0}, 1.0, None)


def test_a_model_that_does_not_load_stops_the_batch_with_its_error(tmp_path, capsys, shared_data):
    csv_path = write_csv(tmp_path / "c.csv", f"id,pet\nSTS_015,{sts(shared_data, 'STS_015')}\n")
    rc = main(["batch", "denoise-segment", "--inputs", str(csv_path), "--out", str(tmp_path / "out"),
               "--model", str(tmp_path / "my_model"), "--progress", "none"])
    assert rc == 2
    assert f"{tmp_path / 'my_model'}: no such model folder or model id" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()
