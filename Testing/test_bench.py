"""`petdiffusion bench` (issue 20): its measuring tools count and weigh what they claim to, the
command offers every registered task, and the committed bench.json has every task's figures.

Benchmarks are commands, never timed tests: nothing here asserts a speed.
"""
from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
from monai.networks.nets import AutoencoderKL

from PETDiffusionLib.batch.measure import count_forward_calls, networks_of, run_child
from PETDiffusionLib.cli.bench import LIBRARY_BENCHES
from PETDiffusionLib.cli.main import build_parser, main
from PETDiffusionLib.tasks.denoise_segment.bench import PAPER_STEPS as AMDIFF_STEPS
from PETDiffusionLib.tasks.denoise_segment.bench import paper_sampler_cost as amdiff_cost
from PETDiffusionLib.tasks.ct_to_pet.bench import PAPER_STEPS as CPDM_STEPS
from PETDiffusionLib.errors import ModelError
from PETDiffusionLib.models.registry import resolve_model
from PETDiffusionLib.tasks.registry import task_ids, task_spec
from PETDiffusionLib.tasks.runner import load_task_model

ROOT = Path(__file__).resolve().parents[1]


def test_the_networks_of_the_shipped_models_are_found_by_name():
    assert set(networks_of(load_task_model("denoise-segment", None, "cpu"))) == {
        "nets.denoiser", "nets.revision", "nets.segmenter"}
    assert set(networks_of(load_task_model("ct-to-pet", None, "cpu"))) == {
        "autoencoder", "attention", "denoiser"}


def test_forward_hooks_count_calls_and_batch_items_and_go_away_after():
    torch.manual_seed(0)
    conv = torch.nn.Conv2d(1, 1, 3, padding=1)
    ae = AutoencoderKL(spatial_dims=2, in_channels=1, out_channels=1, channels=(4, 4),
                       latent_channels=2, num_res_blocks=1, norm_num_groups=2,
                       attention_levels=(False, False))
    model = ({"denoiser": conv, "autoencoder": ae}, {"id": "card, not a network"})
    x = torch.rand(2, 1, 8, 8)
    with torch.no_grad(), count_forward_calls(model) as counts:
        for _ in range(4):
            conv(x)
        z = ae.encode(torch.rand(3, 1, 8, 8))[0]   # used through encode/decode, never forward
        ae.encode(torch.rand(3, 1, 8, 8))
        ae.decode(z)
    assert counts == {"denoiser": {"calls": 4, "items": 8},
                      "autoencoder.encoder": {"calls": 2, "items": 6},
                      "autoencoder.decoder": {"calls": 1, "items": 3}}  # not its 1x1 quant convs
    with torch.no_grad():
        conv(x)
    assert counts["denoiser"] == {"calls": 4, "items": 8}


def test_a_child_process_reports_its_own_peak_memory():
    small, small_mb = run_child("numpy", "ones", {"shape": 1})
    big, big_mb = run_child("numpy", "ones", {"shape": 50_000_000})  # 400 MB of float64, written
    assert small == "[1.]"
    assert big_mb - small_mb > 0.9 * 50_000_000 * 8 / 2**20
    with pytest.raises(RuntimeError, match="numpy.ones failed in its child process"):
        run_child("numpy", "ones", {"shape": -1})


def test_amdiff_paper_cost_is_250_steps_per_128_cube_patch():
    assert amdiff_cost((160, 128, 128))["evaluations_per_volume"] == 2 * 250
    # the paper's own example volume, 440 x 440 x 620 voxels: 4 x 4 x 5 patches
    assert amdiff_cost((620, 440, 440))["evaluations_per_volume"] == 80 * 250
    assert amdiff_cost((620, 440, 440))["reported_seconds"]["seconds"] == round(26.6 * 60)


def test_the_bench_command_offers_every_registered_task_and_the_library_benches():
    parser = build_parser()
    sub = next(a for a in parser._actions if getattr(a, "choices", None) and "bench" in a.choices)
    choices = next(a for a in sub.choices["bench"]._actions if a.dest == "name").choices
    assert list(choices) == [*task_ids(), *LIBRARY_BENCHES, "all"]


def test_bench_json_holds_the_figures_and_the_machine(tmp_path, capsys):
    out = tmp_path / "bench.json"
    assert main(["bench", "lesions", "--json", str(out)]) == 0
    report = json.loads(out.read_text())
    assert report["machine"]["cpu_count"] >= 1 and report["machine"]["torch"] == torch.__version__
    lines = report["library_benches"]["lesions"]["output"]
    assert len(lines) == 1 and lines[0].startswith("lesion_table: 256x256x300 voxels, 50 lesions")
    assert lines[0] in capsys.readouterr().out


def shipped(task_id: str) -> bool:
    try:
        resolve_model(task_spec(task_id).model_id)
    except ModelError:
        return False
    return True


def test_the_committed_bench_json_has_every_registered_task():
    """`make bench` output: every task, with its figures where its model is shipped and, where not
    yet, the error that says so (re-run `make bench` when a task or model changes)."""
    report = json.loads((ROOT / "bench.json").read_text())
    assert sorted(report["tasks"]) == sorted(task_ids())
    for tid, f in report["tasks"].items():
        if not shipped(tid):
            assert task_spec(tid).model_id in f["error"], tid
            continue
        assert f["seconds_per_volume"] > 0 and f["peak_rss_mb"] > 0, tid
        assert f["network_evaluations"] == sum(c["calls"] for c in f["evaluations_by_network"].values())
        assert (f.get("volume") or f["title"]) and f["device"], tid   # the size it was measured at
        assert f["paper"]["steps"] > 0 and f["paper"]["evaluations_per_volume"] > 0, tid
    assert report["tasks"]["denoise-segment"]["paper"]["steps"] == AMDIFF_STEPS == 250
    cpdm = report["tasks"]["ct-to-pet"]["paper"]
    assert cpdm["steps"] == CPDM_STEPS == 200
    assert math.isclose(cpdm["seconds_per_volume_here"],
                        cpdm["seconds_per_evaluation_here"] * cpdm["evaluations_per_volume"], rel_tol=0.01)
    assert set(report["library_benches"]) == set(LIBRARY_BENCHES)
