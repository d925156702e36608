"""Task ct-to-pet: CT (HU) -> synthetic PET (SUVbw) with CPDM (Nguyen et al. 2024, arXiv:2410.21932).

Pipeline (CPDM §4, Fig. 2), 2.5D over the axial slices of the model's working grid:
  1. the CT is reoriented to LPS and resampled to the working spacing recorded in the model card;
  2. attention map M_sigma = sigmoid(U-Net(CT slice and its neighbours))       (CPDM §4.2)
     attenuation map M_mu = exp(-mu(HU, kVp)), Abella 2012 trilinear           (CPDM §4.2, PHYSICS.md §3)
  3. CT slices -> latents y (autoencoder); the Brownian bridge runs from y to the PET latent with
     eps_theta(concat(x_t, CT context latents, M_sigma, M_mu), t), the maps average-pooled to the
     latent grid (CPDM eq. 3, Algorithm 2), skip sampling with ``steps`` of the 1000 training steps;
  4. the decoder gives log-scaled PET, inverted exactly to SUV; N samples give a mean and a
     per-voxel standard deviation (the uncertainty map);
  5. everything is resampled back onto the input CT's grid.

Every PET this task writes is synthetic: the NIfTI header, the manifest and the report say so.
Research model, not for diagnosis.
"""
from __future__ import annotations

import json
import logging
import time
from pathlib import Path

import numpy as np
import SimpleITK as sitk
import torch

from PETDiffusionLib.diffusion.bridge import BrownianBridge
from PETDiffusionLib.diffusion.windows import run_slicewise
from PETDiffusionLib.io.checks import check_ct_hu
from PETDiffusionLib.io.dicom import resolve_kvp  # the parameter, DICOM KVP (0018,0060) or 120
from PETDiffusionLib.io.images import array_and_image, resample_to, same_grid, to_working_grid
from PETDiffusionLib.methods.cpdm.intensities import (CT_HU_MIN, attenuation_condition, ct_to_net,
                                                      net_to_suv)
from PETDiffusionLib.methods.cpdm.latents import ct_stacks, latent_condition, neighbour_indices
from PETDiffusionLib.methods.cpdm.networks import downsample_map
from PETDiffusionLib.methods.cpdm.transforms import pad_to_multiple
from PETDiffusionLib.models.registry import load_model_folder
from PETDiffusionLib.physics.attenuation import DEFAULT_KVP, attenuation_map
from PETDiffusionLib.physics.organ_uptake import check_organ_uptake, groups_for_names, outside_targets
from PETDiffusionLib.report.pdf import make_report
from PETDiffusionLib.tasks.base import RunContext
from PETDiffusionLib.tasks.ct_to_pet.ood import ood_check
from PETDiffusionLib.tasks.ct_to_pet.spec import DEFAULT_STEPS, MODEL_ID, SPEC

log = logging.getLogger(__name__)

PAD_MULTIPLE = 16  # BasicUNet halves 4 times; the latent U-Net twice more on a /4 latent
SLICE_BATCH = 32
SAMPLE_CHUNK = 256  # slices per bridge call (memory of 256 latent slices, any volume length)


# ------------------------------------------------------------------------------------------------
# input checks

def check_ct(ct: sitk.Image, path: str | None) -> np.ndarray:
    """Refuse NaNs, PET volumes and non-HU data with a message naming the file; returns the array."""
    name = path or "ct"
    check_ct_hu(ct, name)  # the shared CT check (io/checks.py)
    return sitk.GetArrayViewFromImage(ct)


def check_inputs(images: dict[str, sitk.Image], params: dict, ctx: RunContext) -> None:
    """The CT must be a CT in HU; without a kVp (parameter or DICOM header) warn and use 120."""
    check_ct(images["ct"], ctx.input_paths.get("ct"))
    _, source = resolve_kvp(images["ct"], params.get("kvp"))
    if source.startswith("default"):
        log.warning("the CT has no kVp (DICOM (0018,0060)) and none was given: using %d kVp for "
                    "HU->mu", DEFAULT_KVP)
        ctx.progress.log(f"no kVp recorded in the CT; using {DEFAULT_KVP} kVp for HU->mu", "warning")


# ------------------------------------------------------------------------------------------------
# the model

def load_model(model_path: str | Path | None = None, device: torch.device | str = "cpu"
               ) -> tuple[dict, dict]:
    """(networks, card) of a model folder, or of the shipped model when ``model_path`` is None."""
    return load_model_folder(model_path or MODEL_ID, device, task=SPEC.id)


@torch.no_grad()
def synthesize(ct_img: sitk.Image, networks: dict, card: dict, *, kvp: float = DEFAULT_KVP,
               steps: int = DEFAULT_STEPS, samples: int = 1, seed: int = 0,
               device: torch.device | str = "cpu", progress=None, cache: dict | None = None,
               canvas: bool = True) -> dict[str, sitk.Image]:
    """CT image -> {"pet", "std", "attention"} images on the CT's grid (SUVbw, SUVbw, probability).

    ``canvas`` (default True; False only for the evaluation's ablation): each working slice is
    padded with air up to the training slice size (card ``preprocessing.slice_size_train``).

    ``progress`` is an optional callable(fraction, message) (a SubProgress). ``cache`` (evaluation
    only): a dict kept between calls on the same CT by models that share the autoencoder and the
    attention network, so the working grid, M_sigma, M_mu and the CT latents are computed once.
    """
    dev = torch.device(device)
    pre, diff = card["preprocessing"], card["diffusion"]
    context, factor, scale = int(pre["context_slices"]), int(pre["latent_factor"]), float(pre["latent_scale"])
    ae, att, den = networks["autoencoder"], networks["attention"], networks["denoiser"]
    report = progress or (lambda f, m="": None)
    t_start = time.monotonic()

    if cache is not None and "y" in cache:
        work, ct_p, (y0, x0, h, w), msig, y, mu = (cache[k] for k in ("work", "ct_p", "box", "msig", "y", "mu"))
        n = len(ct_p)
    else:
        work = to_working_grid(ct_img, pre["working_spacing_mm"], default_value=CT_HU_MIN)
        ct = sitk.GetArrayFromImage(work).astype(np.float32)
        # air around the slice up to the training canvas (issue 14): the networks' GroupNorm
        # statistics span the whole slice, and a body filling a small canvas (a CT cropped to the
        # body, a 300 mm field of view) turned the output into a ~0.5 SUV haze (evaluate
        # --mode real-pairs and totalseg-organs measure it with canvas=False)
        least = int(pre.get("slice_size_train", 0)) if canvas else 0
        ct_p, (y0, x0, h, w) = pad_to_multiple(ct, PAD_MULTIPLE, CT_HU_MIN, least)
        n = len(ct_p)
        ct_n = ct_to_net(ct_p)
        report(0.05, "attention map")
        stacks = torch.from_numpy(ct_stacks(ct_n, np.zeros(n, int), context)).to(dev)
        msig = run_slicewise(lambda x: torch.sigmoid(att(x)), stacks, SLICE_BATCH)     # [n,1,H,W]
        report(0.15, "encode CT")
        y = run_slicewise(lambda x: ae.encode(x)[0], torch.from_numpy(ct_n)[:, None].to(dev),
                          SLICE_BATCH) * scale
        mu = torch.from_numpy(attenuation_condition(ct_p, kvp))[:, None].to(dev)
        if cache is not None:
            cache.update(work=work, ct_p=ct_p, box=(y0, x0, h, w), msig=msig, y=y, mu=mu,
                         prep_seconds=time.monotonic() - t_start)
    cond = latent_condition(
        y, downsample_map(msig, factor) if pre.get("use_sigma", True) else None,
        downsample_map(mu, factor) if pre.get("use_mu", True) else None,
        neighbour_indices(np.zeros(n, int), np.arange(n), context))

    report(0.2, "bridge sampling")
    if str(diff.get("kind", "")).startswith("none"):  # the regression baseline: one pass, t = 0
        lat = run_slicewise(lambda a, c: den(torch.cat([a, c], 1),
                                             torch.zeros(len(a), dtype=torch.long, device=dev)),
                            [y, cond], SLICE_BATCH)[None]
    else:
        bb = BrownianBridge(int(diff["num_train_timesteps"]), float(diff["max_var"]),
                            diff["objective"], float(diff.get("eta", 1.0)))
        chunks = []
        for k, s in enumerate(range(0, n, SAMPLE_CHUNK)):
            e = min(n, s + SAMPLE_CHUNK)
            sub = (lambda f, s=s, e=e: report(0.2 + 0.65 * (s + f * (e - s)) / n, "bridge sampling"))
            res = bb.sample(den, y[s:e], cond[s:e], steps=steps, seed=seed + k, n_samples=samples,
                            progress=sub)
            chunks.append(res.samples)
        lat = torch.cat(chunks, 1)                                          # [N, n, C, h, w]
    report(0.85, "decode")
    suv = torch.stack([net_to_suv(run_slicewise(lambda z: ae.decode(z / scale), s, SLICE_BATCH))
                       for s in lat])
    mean, std = suv.mean(0)[:, 0], suv.std(0, unbiased=False)[:, 0]

    def back(a: torch.Tensor | np.ndarray) -> sitk.Image:
        a = a.cpu().numpy() if isinstance(a, torch.Tensor) else a
        img = array_and_image(np.ascontiguousarray(a[:, y0:y0 + h, x0:x0 + w], dtype=np.float32), work)
        return resample_to(img, ct_img, default_value=0.0)

    out = {"pet": back(mean.clamp_min(0.0)), "std": back(std), "attention": back(msig[:, 0])}
    report(1.0, "done")
    return out


# ------------------------------------------------------------------------------------------------
# predict and report (called by tasks/runner.py)

def predict(images: dict[str, sitk.Image], params: dict, model: tuple[dict, dict], ctx: RunContext
            ) -> dict[str, sitk.Image]:
    """The spec's image outputs on the CT's grid: pet_synthetic, attention_map, attenuation_map and,
    with samples > 1, uncertainty. Records the model, kVp and working grid in ctx.manifest_extra."""
    ct = images["ct"]
    networks, card = model
    kvp, kvp_source = resolve_kvp(ct, params.get("kvp"))
    steps, samples, seed = int(params["steps"]), int(params["samples"]), int(params["seed"])
    torch.manual_seed(seed)
    res = synthesize(ct, networks, card, kvp=kvp, steps=steps, samples=samples, seed=seed,
                     device=ctx.device, progress=ctx.progress.sub(0.05, 0.85, "synthesize"))
    ct_arr = sitk.GetArrayFromImage(ct).astype(np.float32)
    # the images carry no units yet: the runner writes them with the spec's units and synthetic
    # flags, and report() quantifies them as they are (summary.json "suv_units" as before)
    out = {"pet_synthetic": res["pet"],
           "attention_map": res["attention"],
           "attenuation_map": array_and_image(attenuation_map(ct_arr, kvp, "abella"), ct)}
    if samples > 1:
        out["uncertainty"] = res["std"]
    # issue 14: how far this CT is from the training CTs (a kVp only when one is known)
    verdict = ood_check(ct, None if kvp_source.startswith("default") else kvp)
    ctx.manifest_extra["ood"] = verdict.to_dict()
    if verdict.reasons:
        ctx.manifest_extra.setdefault("warnings", []).extend(
            f"out of distribution: {r}" for r in verdict.reasons)
        for r in verdict.reasons:
            ctx.progress.log(f"the CT is out of the model's training distribution: {r}", "warning")
    ctx.manifest_extra.update({
        "model_id": card["id"], "model_version": card.get("version"), "synthetic": True,
        "synthetic_outputs": ["pet_synthetic", "attention_map", "uncertainty"],
        "kvp": kvp, "kvp_source": kvp_source,
        "working_spacing_mm": card["preprocessing"]["working_spacing_mm"],
        "intended_use": card.get("intended_use", "research model, not for diagnosis")})
    return out


def organ_names_for(path: str | None) -> dict[int, str] | None:
    """Names of the labels from a case.json beside the label map (the simulator writes one); else
    None, and the organ table names them label_<n>."""
    if path:
        cj = Path(path).parent / "case.json"
        if cj.is_file():
            try:
                return {int(k): str(v) for k, v in json.loads(cj.read_text())["organ_labels"].items()}
            except (KeyError, ValueError, json.JSONDecodeError):
                pass
    return None


def report(images: dict[str, sitk.Image], outputs: dict[str, sitk.Image], params: dict,
           model: tuple[dict, dict], ctx: RunContext) -> dict[str, Path]:
    """With an organ label map: the organ SUV table and the PDF report of the synthetic PET in
    ctx.out_dir ({output name: path}: organs_csv, report, and the report's report_json and
    summary_json); without one, nothing."""
    if "organs" not in images:
        return {}
    _, card = model
    ct = images["ct"]
    ctx.progress.update("organ table and report", 0.9)
    organs = images["organs"]
    if not same_grid(organs, ct):
        organs = resample_to(organs, ct, is_label=True)
    names = organ_names_for(ctx.input_paths.get("organs"))
    kvp, kvp_source = resolve_kvp(ct, params.get("kvp"))
    extra = {"kVp": kvp, "kVp source": kvp_source, "steps": int(params["steps"]),
             "samples": int(params["samples"]), "seed": int(params["seed"]),
             "note": "synthetic PET from CT; research model, not for diagnosis"}
    # issue 14: organ SUVmean against the literature FDG ranges, when the label names are known
    if names:
        rows = check_organ_uptake(sitk.GetArrayFromImage(outputs["pet_synthetic"]),
                                  sitk.GetArrayFromImage(organs), names, groups_for_names(names),
                                  tuple(float(s) for s in reversed(ct.GetSpacing())))
        ctx.manifest_extra["organ_uptake_check"] = rows
        if outside_targets(rows):
            ctx.manifest_extra.setdefault("warnings", []).extend(outside_targets(rows))
            extra["organs outside the FDG ranges"] = " | ".join(outside_targets(rows))
    else:
        ctx.manifest_extra["organ_uptake_check"] = "skipped: the organ label names are unknown"
    ood = ctx.manifest_extra.get("ood", {})
    if ood.get("out_of_distribution"):
        extra["OUT OF DISTRIBUTION"] = " | ".join(ood["reasons"])
    rep = make_report(ctx.out_dir, outputs["pet_synthetic"], None, organs, names, task=SPEC.id,
                      model_id=card["id"], model_version=card.get("version"), synthetic=True,
                      extra=extra)
    ctx.manifest_extra["report_files"] = sorted(Path(p).name for p in rep.values())
    return {("report" if k == "report_pdf" else k): Path(p) for k, p in rep.items()}

