"""`petdiffusion batch --engine ray` on a real Ray instance on this machine, 127.0.0.1 only (issue 20).

Acceptance: a cohort of three real sarcoma PET studies (../shared/data/petct_sts_more, SUVbw NIfTI;
MANIFEST.md) and one row whose file is missing, `--engine ray --workers 2` through the real CLI:
the three finish ok with their outputs, the broken row fails alone with its error in summary.csv,
summary.csv says engine ray and shows two workers, the exit status is non-zero; the same command
again skips the three in a fraction of the first run's time.

Then a cluster started the documented way (`ray start --head`, docs/SCALE.md) is joined with
`--address`: a study that fails inside a Ray worker fails alone, each worker loads the model once.

Two Ray starts in all (the CLI's own local instance, the head): Ray takes seconds to start here.
Every Ray process binds 127.0.0.1 (RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0) and sends no usage
statistics (RAY_USAGE_STATS_ENABLED=0).
"""
from __future__ import annotations

import csv
import json
import os
import secrets
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from PETDiffusionLib.batch.cohort import complete_manifest
from PETDiffusionLib.tasks.registry import task_spec

ROOT = Path(__file__).resolve().parents[1]
RAY_ENV = {"RAY_USAGE_STATS_ENABLED": "0", "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0",
           "OMP_NUM_THREADS": "1"}
STUDIES = ("STS_015", "STS_014", "STS_016")  # the smallest crops: 29x31x57 to 41x38x71 voxels


def sts_pet(shared: Path, case: str, image: str = "PET_image.nii.gz") -> Path:
    return shared / "petct_sts_more" / case / image


def run_cli(args: list[str], env: dict | None = None) -> tuple[subprocess.CompletedProcess, float]:
    t0 = time.monotonic()
    done = subprocess.run([sys.executable, "-m", "PETDiffusionLib", *args], capture_output=True,
                          text=True, cwd=ROOT, timeout=600,
                          env={**os.environ, **RAY_ENV, **(env or {})})
    return done, time.monotonic() - t0


def read_summary(out: Path) -> dict[str, dict[str, str]]:
    with (out / "summary.csv").open(newline="", encoding="utf-8") as fh:
        return {row["id"]: row for row in csv.DictReader(fh)}


@pytest.fixture(scope="module")
def acceptance(tmp_path_factory, shared_data):
    root = tmp_path_factory.mktemp("batch_ray")
    rows = [f"{s},{sts_pet(shared_data, s)}" for s in STUDIES]
    rows.append(f"STS_404,{root / 'STS_404' / 'PET_image.nii.gz'}")
    csv_path = root / "cohort.csv"
    csv_path.write_text("id,pet\n" + "\n".join(rows) + "\n", encoding="utf-8")
    out = root / "out"
    args = ["batch", "denoise-segment", "--inputs", str(csv_path), "--out", str(out),
            "--engine", "ray", "--workers", "2", "--device", "cpu"]
    first, t_first = run_cli(args)
    summary_first = read_summary(out)
    second, t_second = run_cli(args)
    return {"out": out, "root": root, "first": first, "t_first": t_first,
            "summary_first": summary_first, "second": second, "t_second": t_second,
            "summary_second": read_summary(out)}


def test_three_studies_finish_on_two_ray_workers_and_the_broken_row_fails_alone(acceptance):
    first, rows, out = acceptance["first"], acceptance["summary_first"], acceptance["out"]
    assert first.returncode == 1, first.stderr[-3000:]
    assert list(rows) == [*STUDIES, "STS_404"]
    for sid in STUDIES:
        assert rows[sid]["status"] == "ok", rows[sid]
        assert rows[sid]["error"] == ""
        manifest = complete_manifest(out / sid, "denoise-segment")
        assert manifest is not None and manifest["task"] == "denoise-segment"
        assert (out / sid / "pet_denoised.nii.gz").is_file() and (out / sid / "report.pdf").is_file()
    assert rows["STS_404"]["status"] == "failed"
    assert rows["STS_404"]["error"] == (f"line 5, column pet: {acceptance['root']}/STS_404/"
                                        "PET_image.nii.gz does not exist")
    assert not (out / "STS_404").exists()
    assert {r["engine"] for r in rows.values()} == {"ray"}
    workers = {rows[s]["worker"] for s in STUDIES}
    assert len(workers) == 2, workers                  # two Ray worker processes shared the work
    assert all(w.split(":")[-1].isdigit() and int(w.split(":")[-1]) != os.getpid() for w in workers)
    assert "3 ok, 0 skipped, 1 failed" in first.stdout and "on ray (2 worker(s))" in first.stdout


def test_the_same_command_again_skips_the_three_in_a_fraction_of_the_time(acceptance):
    second, rows = acceptance["second"], acceptance["summary_second"]
    assert second.returncode == 1
    assert {k: r["status"] for k, r in rows.items()} == {
        **{s: "skipped" for s in STUDIES}, "STS_404": "failed"}
    for sid in STUDIES:  # the figures come back from the studies' files, as in the first run
        for col in ("tmtv_ml", "ttlg", "lesion_count", "liver_suv_mean"):
            assert rows[sid][col] == acceptance["summary_first"][sid][col]
    assert acceptance["t_second"] < 0.5 * acceptance["t_first"], (acceptance["t_second"],
                                                                   acceptance["t_first"])
    assert "Started a local Ray instance" not in second.stderr  # nothing to run: no cluster


# ---------------------------------------------------------------- joining an existing cluster
def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def ray_head(tmp_path_factory):
    """`ray start --head --block` on 127.0.0.1 with a token of its own (RAY_AUTH_MODE=token), as
    docs/SCALE.md starts a head node; stopped by signalling that one process at the end."""
    port = free_port()
    env = {**os.environ, **RAY_ENV, "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": secrets.token_hex(32)}
    log = tmp_path_factory.mktemp("ray_head") / "head.log"
    ray = Path(sys.executable).with_name("ray")
    with log.open("w") as fh:
        proc = subprocess.Popen([str(ray), "start", "--head", "--block", "--node-ip-address=127.0.0.1",
                                 f"--port={port}", "--num-cpus=2", "--include-dashboard=false",
                                 "--disable-usage-stats"], stdout=fh, stderr=subprocess.STDOUT, env=env)
    deadline = time.monotonic() + 180
    while "Ray runtime started" not in log.read_text() and proc.poll() is None:
        if time.monotonic() > deadline:
            break
        time.sleep(1)
    assert proc.poll() is None, log.read_text()[-3000:]
    yield {"address": f"127.0.0.1:{port}", "env": env, "proc": proc}
    proc.terminate()  # --block: the head stops its own Ray processes on SIGTERM
    try:
        proc.wait(timeout=60)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def test_joining_a_cluster_a_study_failing_inside_a_worker_fails_alone(ray_head, shared_data, tmp_path):
    csv_path = tmp_path / "cohort.csv"
    csv_path.write_text("id,pet\n"
                        f"STS_015,{sts_pet(shared_data, 'STS_015')}\n"
                        f"ct_as_pet,{sts_pet(shared_data, 'STS_014', 'CT_image.nii.gz')}\n"
                        f"STS_014,{sts_pet(shared_data, 'STS_014')}\n", encoding="utf-8")
    out = tmp_path / "out"
    done, _ = run_cli(["batch", "denoise-segment", "--inputs", str(csv_path), "--out", str(out),
                       "--engine", "ray", "--address", ray_head["address"], "--workers", "2",
                       "--device", "cpu", "--progress", "json"], env=ray_head["env"])
    assert done.returncode == 1, done.stderr[-3000:]
    events = [json.loads(line) for line in done.stdout.splitlines()]  # stdout: JSON lines only
    workers = [e for e in events if e["event"] == "worker"]
    studies = {e["id"]: e for e in events if e["event"] == "study"}
    assert len(workers) == 2 and len({w["worker"] for w in workers}) == 2  # one model load each
    assert all(w["model_seconds"] >= 0 for w in workers)
    assert {k: e["status"] for k, e in studies.items()} == {
        "STS_015": "ok", "ct_as_pet": "failed", "STS_014": "ok"}
    assert studies["ct_as_pet"]["worker"] in {w["worker"] for w in workers}  # failed in a worker
    assert studies["ct_as_pet"]["error"].startswith(
        f"{sts_pet(shared_data, 'STS_014', 'CT_image.nii.gz')}: values down to -1000 look like a CT")
    rows = read_summary(out)
    assert rows["ct_as_pet"]["error"] == studies["ct_as_pet"]["error"]
    assert [e["fraction"] for e in events if e["event"] == "progress"] == [0.3333, 0.6667, 1.0]
    result = events[-1]
    assert result["event"] == "result" and result["summary"] == str(out / "summary.csv")
    assert result["counts"] == {"ok": 2, "skipped": 0, "failed": 1} and result["engine"] == "ray"
    assert not (out / "ct_as_pet").exists()
    assert ray_head["proc"].poll() is None  # the driver left the cluster running
    # the headline columns of the task are there for the ok studies
    assert set(task_spec("denoise-segment").headline) and rows["STS_015"]["lesion_count"] != ""
