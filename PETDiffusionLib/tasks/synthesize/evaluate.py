"""`petdiffusion evaluate synthesize --cohort cohorts/totalgen_heldout --out FILE.json`.

As TotalGen Table 1 (seed §3): organ volume, SUVmean and SUVmax of liver, heart and kidneys by sex
for synthetic subjects with the demographics of a held-out simulated population, against that
population (the simulator's own labels and PSF-blurred true SUV on the same 4 mm box) and against
the paper's real AutoPET figures; then the acceptance demographics of issue 17 over ``--seeds``
seeds (full cascade), the spread across seeds (diversity), the demographic response (heavier ->
more fat, taller -> longer trunk) and a seam check of the windowed super-resolution.

The held-out rows use stage 1 in one batch and ``--table-sr-steps`` super-resolution steps (0 by
default: the organ labels come from stage 1 either way; this keeps the table within the CPU
budget); the acceptance rows run the whole cascade with ``--sr-steps``.
"""
from __future__ import annotations

import argparse
import json
import logging
import time
from pathlib import Path

import numpy as np
import torch

from PETDiffusionLib.diffusion.edm import EDM, ResidualSuperResolution
from PETDiffusionLib.diffusion.windows import WindowedNet
from PETDiffusionLib.errors import InputError
from PETDiffusionLib.io.atomic import atomic_write_text
from PETDiffusionLib.methods.totalgen.data import (FACTOR, HR_SHAPE, ORGAN_GROUP_ID, load_cohort,
                                                   organ_channels)
from PETDiffusionLib.methods.totalgen.intensities import demographic_vector
from PETDiffusionLib.methods.totalgen.synthesis import (SR_OVERLAP, SR_WINDOW, body_box,
                                                        body_figures, finish, measure,
                                                        organ_encoding, organ_map,
                                                        sample_global_batch, sr_condition)
from PETDiffusionLib.models.registry import resolve_model
from PETDiffusionLib.tasks.synthesize.pipeline import load_model
from PETDiffusionLib.tasks.synthesize.spec import DEFAULT_CHURN, DEFAULT_SR_STEPS, DEFAULT_STEPS

log = logging.getLogger(__name__)

# TotalGen Table 1, AutoPET (real) column: (mean, SD) by sex; volumes in L.
AUTOPET_TABLE1 = {
    ("liver", "volume_l"): {"M": (1.76, 0.44), "F": (1.55, 0.37)},
    ("liver", "suv_mean"): {"M": (2.26, 0.42), "F": (2.34, 0.33)},
    ("liver", "suv_max"): {"M": (7.29, 4.28), "F": (7.03, 4.57)},
    ("heart", "volume_l"): {"M": (0.68, 0.15), "F": (0.55, 0.09)},
    ("heart", "suv_mean"): {"M": (2.48, 1.03), "F": (3.07, 1.39)},
    ("heart", "suv_max"): {"M": (10.20, 5.92), "F": (12.20, 7.46)},
    ("kidneys", "volume_l"): {"M": (0.30, 0.08), "F": (0.30, 0.06)},
    ("kidneys", "suv_mean"): {"M": (2.50, 0.41), "F": (2.70, 0.45)},
    ("kidneys", "suv_max"): {"M": (11.20, 5.24), "F": (11.83, 5.55)},
}
ACCEPTANCE = {"M": (58.0, 177.0, 83.0), "F": (59.0, 165.0, 76.0)}
"""Issue 17 / TotalGen Table 1 test-cohort means: (age, height cm, weight kg) by sex."""
ACCEPT_TOLERANCE = 0.10   # issue 17: within 10 % of the AutoPET means
LIVER_HU_RANGE = (30.0, 75.0)  # issue 17 acceptance (PHYSICS.md §5: liver 45-65 HU unenhanced)
ACCEPT_KEYS = [("liver", "volume_l"), ("liver", "suv_mean"), ("kidneys", "volume_l"),
               ("kidneys", "suv_mean"), ("heart", "volume_l"), ("heart", "suv_mean")]
RESPONSE_WEIGHTS_KG = (60.0, 83.0, 110.0)   # male, 58 y, 177 cm: BMI 19.2 / 26.5 / 35.1
RESPONSE_HEIGHTS_CM = (162.0, 177.0, 192.0)  # male, 58 y, at BMI 26.5


def add_evaluate_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", default=None, help="model folder (default: the shipped model)")
    p.add_argument("--steps", type=int, default=DEFAULT_STEPS, help="stage-1 Heun steps")
    p.add_argument("--churn", type=float, default=DEFAULT_CHURN,
                   help="stage-1 S_churn (Karras et al. 2022 Algorithm 2; 0: the deterministic sampler)")
    p.add_argument("--sr-steps", type=int, default=DEFAULT_SR_STEPS,
                   help="stage-2 steps of the acceptance subjects")
    p.add_argument("--table-sr-steps", type=int, default=0,
                   help="stage-2 steps of the held-out table rows (0: linear upsampling)")
    p.add_argument("--seeds", type=int, default=3, help="seeds per acceptance subject")
    p.add_argument("--max-subjects", type=int, default=0, help="use the first N held-out subjects")
    p.add_argument("--no-response", action="store_true", help="skip the demographic response")
    p.add_argument("--write-card", action="store_true",
                   help="copy the figures into the model folder's card.json (\"evaluation\")")
    p.add_argument("--train-cohort", default="cohorts/totalgen_train",
                   help="the training population, summarised beside AutoPET (subject_*.json)")


def _summary(rows: list[dict]) -> dict:
    """{(organ, quantity): (mean, sd, n)} over measurement rows."""
    out = {}
    for key in AUTOPET_TABLE1:
        v = np.array([r[key[0]][key[1]] for r in rows], float)
        v = v[np.isfinite(v)]
        out[key] = (float(v.mean()) if len(v) else float("nan"),
                    float(v.std(ddof=1)) if len(v) > 1 else 0.0, int(len(v)))
    return out


def _jsonable(summary: dict) -> dict:
    return {f"{o}.{q}": {"mean": round(m, 4), "sd": round(s, 4), "n": n}
            for (o, q), (m, s, n) in summary.items()}


def table1(nets: dict, infos: list[dict], steps: int, sr_steps: int, seed: int,
           encoding: str = "indicator", churn: float = 0.0) -> dict:
    """Synthetic vs held-out population vs AutoPET, by sex."""
    demos = [demographic_vector(i["demographics"]["age"], i["demographics"]["sex"],
                                i["demographics"]["height_cm"], i["demographics"]["weight_kg"])
             for i in infos]
    t0 = time.monotonic()
    lr = sample_global_batch(nets["global"], demos, steps, seed, churn)
    t_stage1 = time.monotonic() - t0
    synth = []
    for k, info in enumerate(infos):
        s = finish(nets, lr[k], demos[k], sr_steps, seed + 1 + k, encoding=encoding)
        synth.append({**measure(s.organs, s.suv, s.ct_hu), "sex": info["demographics"]["sex"]})
    out = {"stage1_seconds_batch": round(t_stage1, 1), "n": len(infos), "by_sex": {}}
    for sex in ("M", "F"):
        real = [i["measures"] for i in infos if i["demographics"]["sex"] == sex]
        syn = [r for r in synth if r["sex"] == sex]
        if not real:
            continue
        out["by_sex"][sex] = {"n": len(real), "synthetic": _jsonable(_summary(syn)),
                              "heldout_population": _jsonable(_summary(real)),
                              "autopet": {f"{o}.{q}": {"mean": v[sex][0], "sd": v[sex][1]}
                                          for (o, q), v in AUTOPET_TABLE1.items()}}
    return out


def acceptance(nets: dict, steps: int, sr_steps: int, seeds: int, seed: int = 0,
               encoding: str = "indicator", churn: float = 0.0) -> dict:
    """Both acceptance subjects x ``seeds`` stage-1 samples (one batch: each sample its own noise
    draw), then stage 2 with ``sr_steps`` per sample."""
    order = [(sex, k) for sex in ACCEPTANCE for k in range(seeds)]
    demos = [demographic_vector(ACCEPTANCE[sex][0], sex, ACCEPTANCE[sex][1], ACCEPTANCE[sex][2])
             for sex, _ in order]
    t0 = time.monotonic()
    lr = sample_global_batch(nets["global"], demos, steps, seed, churn)
    t_stage1 = (time.monotonic() - t0) / len(order)
    out = {}
    for sex, (age, h, w) in ACCEPTANCE.items():
        rows, figs = [], []
        for j, (s_, k) in enumerate(order):
            if s_ != sex:
                continue
            t0 = time.monotonic()
            s = finish(nets, lr[j], demos[j], sr_steps, seed + 1 + j, encoding=encoding)
            rows.append(measure(s.organs, s.suv, s.ct_hu))
            figs.append({**body_figures(s.ct_hu),
                         "seconds": round(t_stage1 + time.monotonic() - t0, 1)})
        res = {"demographics": {"age": age, "height_cm": h, "weight_kg": w}, "seeds": seeds,
               "per_seed": [{f"{o}.{q}": round(r[o][q], 4) for o, q in ACCEPT_KEYS}
                            | {"liver.ct_mean_hu": round(r["liver"]["ct_mean_hu"], 1)} for r in rows],
               "body": figs, "checks": {}}
        for o, q in ACCEPT_KEYS:
            vals = np.array([r[o][q] for r in rows], float)
            ref = AUTOPET_TABLE1[(o, q)][sex][0]
            mean = float(np.nanmean(vals)) if np.isfinite(vals).any() else float("nan")
            rel = (mean - ref) / ref
            res["checks"][f"{o}.{q}"] = {"mean": round(mean, 4), "autopet": ref,
                                         "relative_difference": round(rel, 4),
                                         "seed_sd": round(float(np.nanstd(vals)), 4),
                                         "within_10_percent": bool(abs(rel) <= ACCEPT_TOLERANCE)}
        hu = [r["liver"]["ct_mean_hu"] for r in rows]
        res["checks"]["liver.ct_hu"] = {"values": [round(v, 1) for v in hu],
                                        "within_30_75": bool(all(LIVER_HU_RANGE[0] <= v <= LIVER_HU_RANGE[1]
                                                                 for v in hu))}
        vols = [[round(r[o]["volume_l"], 4) for r in rows] for o in ("liver", "kidneys", "heart")]
        res["checks"]["volumes_differ_between_seeds"] = bool(all(len(set(v)) == len(v) for v in vols))
        out[sex] = res
    return out


def response(nets: dict, steps: int, seeds: int, churn: float = 0.0) -> dict:
    """Fat volume against weight and trunk length against height (male, 58 y), stage 1 + upsampling."""
    def run(demos):
        lr = sample_global_batch(nets["global"], demos, steps, 0, churn)
        return [body_figures(finish(nets, lr[k], demos[k], 0, 1).ct_hu) for k in range(len(demos))]
    wd = [demographic_vector(58.0, "M", 177.0, w) for w in RESPONSE_WEIGHTS_KG for _ in range(seeds)]
    bmi = 83.0 / 1.77 ** 2
    hd = [demographic_vector(58.0, "M", h, round(bmi * (h / 100) ** 2, 1))
          for h in RESPONSE_HEIGHTS_CM for _ in range(seeds)]
    wf, hf = run(wd), run(hd)

    def mean_of(figs, key, i):
        return round(float(np.mean([f[key] for f in figs[i * seeds:(i + 1) * seeds]])), 2)
    return {"weight_kg": list(RESPONSE_WEIGHTS_KG),
            "fat_l": [mean_of(wf, "fat_l", i) for i in range(len(RESPONSE_WEIGHTS_KG))],
            "body_l": [mean_of(wf, "body_l", i) for i in range(len(RESPONSE_WEIGHTS_KG))],
            "height_cm": list(RESPONSE_HEIGHTS_CM),
            "trunk_length_mm": [mean_of(hf, "trunk_length_mm", i) for i in range(len(RESPONSE_HEIGHTS_CM))],
            "seeds": seeds}


@torch.no_grad()
def seam_check(nets: dict, steps: int, sigma: float = 0.5) -> dict:
    """The stage-2 denoiser at one noise level, windowed (z-chunks, Gaussian blending) vs over the
    whole body box in one call: their difference, inside and away from the chunk overlaps."""
    age, height, weight = ACCEPTANCE["M"]
    demo = demographic_vector(age, "M", height, weight)
    lr = sample_global_batch(nets["global"], [demo], steps, 0)[:, :2]
    up = ResidualSuperResolution().upsample(lr, HR_SHAPE)
    box = body_box((up[0, 0] + 1) / 2)
    sl = (slice(None), slice(None)) + box
    cond = torch.cat([up, sr_condition(demo)], 1)[sl]
    size = tuple(s.stop - s.start for s in box)
    g = torch.Generator().manual_seed(0)
    x = sigma * torch.randn((1, 2, *size), generator=g)
    edm = EDM()
    whole = edm.denoise(nets["sr"], x, sigma, cond)
    roi = tuple(min(w, n) for w, n in zip(SR_WINDOW, size))
    win = edm.denoise(WindowedNet(nets["sr"], roi, overlap=SR_OVERLAP), x, sigma, cond)
    diff = (whole - win).abs()[0].amax(0)  # [z, y, x]
    per_slice = diff.mean((1, 2))
    return {"sigma": sigma, "box_zyx": list(size), "window_zyx": list(roi),
            "max_abs_difference": round(float(diff.max()), 5),
            "mean_abs_difference": round(float(diff.mean()), 6),
            "worst_slice_mean_abs_difference": round(float(per_slice.max()), 6),
            "denoised_std": round(float(whole.std()), 4),
            "units": "network units (2u - 1): 1.0 = 500 HU of CT"}


DECODING_OFFSETS = ((0, 0, 0), (1, 2, 1), (3, 3, 2))
"""Three of the 64 stratified sub-sampling offsets (z, y, x) used by :func:`decoding_ceiling`."""


def decoding_ceiling(folder: Path, encoding: str, subjects: int = 8) -> dict:
    """What a perfect stage 1 would give: the held-out subjects' own organ channels, sub-sampled to
    16 mm and decoded back to 4 mm as the task decodes them (``encoding``); the decoded volume over
    the true one, per organ (mean and smallest over subjects x DECODING_OFFSETS)."""
    arrays, _ = load_cohort(folder)
    ratios: dict[str, list[float]] = {o: [] for o in ("liver", "kidneys", "heart")}
    for a in arrays[:subjects]:
        groups = a["groups"]
        channels = organ_channels(groups, encoding)
        for oz, oy, ox in DECODING_OFFSETS:
            lr = np.ascontiguousarray(channels[:, oz::FACTOR, oy::FACTOR, ox::FACTOR])
            labels = organ_map(torch.from_numpy(lr), np.full(groups.shape, -1000.0, np.float32), encoding)
            for o in ratios:
                gid = ORGAN_GROUP_ID[o]
                ratios[o].append(float((labels == gid).sum() / max(1, (groups == gid).sum())))
    return {"encoding": encoding, "subjects": min(subjects, len(arrays)),
            "offsets": [list(o) for o in DECODING_OFFSETS],
            "volume_ratio": {o: {"mean": round(float(np.mean(v)), 4), "min": round(float(np.min(v)), 4)}
                             for o, v in ratios.items()}}


def population_summary(folder: Path) -> dict:
    """The organ figures of a prepared population by sex (its subject_*.json), and its demographics."""
    infos = [json.loads(p.read_text()) for p in sorted(Path(folder).glob("subject_*.json"))]
    out = {}
    for sex in ("M", "F"):
        rows = [i for i in infos if i["demographics"]["sex"] == sex]
        if rows:
            d = {k: [r["demographics"][k] for r in rows] for k in ("age", "height_cm", "weight_kg")}
            out[sex] = {"n": len(rows), "organs": _jsonable(_summary([r["measures"] for r in rows])),
                        "demographics": {k: [round(min(v), 1), round(max(v), 1)] for k, v in d.items()}
                        | {"bmi": [round(min(r["bmi"] for r in rows), 1),
                                   round(max(r["bmi"] for r in rows), 1)]}}
    return out


def evaluate(args) -> str:
    nets, card = load_model(args.model, "cpu")
    infos = [json.loads(p.read_text()) for p in sorted(Path(args.cohort).glob("subject_*.json"))]
    if not infos:
        raise InputError("no subject_*.json: not a prepared synthesize cohort (petdiffusion train "
                         "synthesize --stage prepare writes one)", args.cohort)
    if args.max_subjects:
        infos = infos[:args.max_subjects]
    t0 = time.monotonic()
    result = {"model": card["id"], "version": card.get("version"), "cohort": str(args.cohort),
              "steps": args.steps, "sr_steps": args.sr_steps, "table_sr_steps": args.table_sr_steps,
              "churn": args.churn}
    if Path(args.train_cohort).is_dir():
        result["training_population"] = population_summary(Path(args.train_cohort))
    log.info("Table 1 over %d held-out subjects", len(infos))
    encoding = organ_encoding(card)
    result["organ_encoding"] = encoding
    result["table1"] = table1(nets, infos, args.steps, args.table_sr_steps, args.seed, encoding, args.churn)
    result["decoding_ceiling"] = decoding_ceiling(Path(args.cohort), encoding)
    log.info("acceptance demographics, %d seeds", args.seeds)
    result["acceptance"] = acceptance(nets, args.steps, args.sr_steps, args.seeds, args.seed,
                                      encoding, args.churn)
    if not args.no_response:
        result["response"] = response(nets, args.steps, 2, args.churn)
    result["seams"] = seam_check(nets, args.steps)
    result["seconds"] = round(time.monotonic() - t0, 1)
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(result, indent=1))
    if args.write_card:
        record_evaluation(Path(args.model) if args.model else resolve_model(card["id"]), result,
                          f"petdiffusion evaluate synthesize --cohort {args.cohort} --steps "
                          f"{args.steps} --sr-steps {args.sr_steps} --seeds {args.seeds} --churn {args.churn:g}")
    return format_result(result)


def record_evaluation(model_folder: Path, result: dict, command: str) -> dict:
    """The figures into the card's "evaluation" (card.json is not part of the hashed weights)."""
    path = Path(model_folder) / "card.json"
    if not path.is_file():
        raise InputError("not a model folder (no card.json)", model_folder)
    card = json.loads(path.read_text())
    card["evaluation"] = {"command": command, **result}
    atomic_write_text(path, json.dumps(card, indent=2) + "\n")
    return card


def format_result(r: dict) -> str:
    lines = [f"synthesize evaluation: model {r['model']} {r['version']}, {r['steps']} stage-1 steps, "
             f"churn {r.get('churn', 0.0):g}"]
    for sex, t in r["table1"]["by_sex"].items():
        lines.append(f"Table 1, {sex} (n = {t['n']}): synthetic | held-out population | AutoPET (mean ± SD)")
        for key in t["autopet"]:
            s, h, a = t["synthetic"][key], t["heldout_population"][key], t["autopet"][key]
            lines.append(f"  {key:<18}{s['mean']:8.3f} ± {s['sd']:<6.3f}{h['mean']:8.3f} ± {h['sd']:<6.3f}"
                         f"{a['mean']:8.2f} ± {a['sd']:.2f}")
    for sex, a in r["acceptance"].items():
        lines.append(f"acceptance {sex} {a['demographics']} over {a['seeds']} seeds:")
        for key, c in a["checks"].items():
            lines.append(f"  {key:<30}{json.dumps(c)}")
    if "response" in r:
        lines.append(f"response: {json.dumps(r['response'])}")
    if "decoding_ceiling" in r:
        lines.append(f"decoding ceiling (exact stage-1 organ channels, decoded volume / true): "
                     f"{json.dumps(r['decoding_ceiling']['volume_ratio'])}")
    lines.append(f"seams: {json.dumps(r['seams'])}")
    return "\n".join(lines)
