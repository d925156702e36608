"""What the synthesize task declares: no image inputs, the demographics as parameters, and its
outputs (no torch: ``petdiffusion spec`` and the Slicer panel read this at once)."""
from __future__ import annotations

from PETDiffusionLib.tasks.base import Output, Parameter, TaskSpec

MODEL_ID = "totalgen-phantom-16mm"
DEFAULT_STEPS = 18
"""Stage-1 Heun steps (Karras et al. 2022 Table 1: 18 for EDM; TotalGen §3 used 35), chosen for
this CPU; the model card's evaluation records the figures at 18 and 35."""
DEFAULT_CHURN = 40.0
"""Stage-1 S_churn of Karras et al. 2022 Algorithm 2 (0: the deterministic Algorithm 1; the noise
added back at each step is gamma = min(S_churn / steps, sqrt(2) - 1) of the current level, so at
18 steps any S_churn >= 7.5 is the full sqrt(2) - 1). Measured with totalgen-phantom-16mm 0.3.0 by
``petdiffusion evaluate synthesize --cohort cohorts/totalgen_heldout --steps 18 --sr-steps 6
--seeds 3 --churn C``: mean |relative difference| to AutoPET of the 12 acceptance values 25.6 % at
0, 19.8 % at 5 and 19.6 % at 40 (4 of 12 within 10 % each; the card's ablation_churn)."""
DEFAULT_SR_STEPS = 6
"""Stage-2 Heun steps (TotalGen §3 used 100): the residual is small next to the upsampled volume,
and 6 steps keep one subject under the 5-minute budget of issue 17 on this 2-core CPU."""
MIN_SR_STEPS = 6
"""Fewest stage-2 Heun steps that give a physiological PET (0, linear upsampling, is also allowed).
Measured with totalgen-phantom-16mm 0.3.0, male 58 y / 177 cm / 83 kg, seed 0, 8 stage-1 steps:
liver SUVmean 12.4 with 2 SR steps, 4.1 with 4, 2.23 with 6 and 2.17 with 0 (AutoPET 2.26): too
few steps from sigma_max leave noise that the log-SUV scale turns into SUV 25 voxels."""

SPEC = TaskSpec(
    id="synthesize",
    title="Demographics to synthetic whole-body PET/CT (TotalGen)",
    paper="TotalGen: Yoon et al. 2025, cascaded 3D diffusion models for whole-body 18F-FDG PET/CT "
          "synthesis from demographics",
    description="Synthesizes a plausible clavicle-to-sacrum FDG PET (SUVbw) and CT (HU) with organ "
                "labels for a person of the given age, sex, height and weight: a global 3D EDM "
                "diffusion model at 16 mm, then patch-wise residual super-resolution to 4 mm. "
                "Everything it writes is SYNTHETIC (a virtual subject for trials, teaching and "
                "pipeline tests), never a patient's image.",
    inputs=(),
    parameters=(
        Parameter("age", float, 58.0, "age in years (trained on 20-85)", minimum=0.0, maximum=120.0),
        Parameter("sex", str, "M", "sex: M or F", choices=("M", "F")),
        Parameter("height", float, 177.0, "height in cm (trained on about 148-195)",
                  minimum=50.0, maximum=250.0),
        Parameter("weight", float, 83.0, "weight in kg (trained on BMI 17-40)", minimum=2.0,
                  maximum=400.0),
        Parameter("seed", int, 0, "random seed: another seed, another subject (same seed, same "
                  "device: same output)", minimum=0),
        Parameter("steps", int, DEFAULT_STEPS, "stage-1 (global) Heun sampling steps",
                  minimum=1, maximum=200),
        Parameter("churn", float, DEFAULT_CHURN, "stage-1 stochasticity S_churn (Karras et al. "
                  "2022 Algorithm 2); 0 = deterministic sampling", minimum=0.0, maximum=100.0),
        Parameter("sr_steps", int, DEFAULT_SR_STEPS, "stage-2 (super-resolution) Heun steps; 0 = "
                  "linear upsampling of the 16 mm volume only; otherwise at least MIN_SR_STEPS (6)",
                  minimum=0, maximum=200),
        Parameter("allow_out_of_range", bool, False, "synthesize even when the demographics lie "
                  "outside the training population (the manifest and report then carry a warning); "
                  "otherwise such a request is refused"),
    ),
    outputs=(
        Output("ct", "ct.nii.gz", "volume", "SYNTHETIC CT (HU), 4 mm, clavicle to sacrum",
               units="HU", synthetic=True),
        Output("pet", "pet.nii.gz", "volume", "SYNTHETIC FDG PET (SUVbw), 4 mm, on the CT grid",
               units="SUVbw", synthetic=True),
        Output("organs", "organs.nii.gz", "labelmap", "SYNTHETIC organ labels (names in the "
               "manifest's organ_labels)", synthetic=True, label_names="organ_labels"),
        Output("organs_csv", "organs.csv", "table", "organ volume, SUVmean and SUVmax of the "
               "synthetic subject", synthetic=True),
        Output("report", "report.pdf", "report", "PDF report (synthetic banner on every page)",
               synthetic=True),
        Output("report_json", "report.json", "json", "the report's content as JSON",
               synthetic=True),
        Output("summary_json", "summary.json", "json", "quantification summary of the synthetic PET",
               synthetic=True),
    ),
    model_id=MODEL_ID,
    slicer_module="DemographicsSynthesis",
    # summary.csv of `petdiffusion batch synthesize --inputs CSV` (batch/headline.py): the organ
    # figures of TotalGen Table 1
    headline=("organs_csv:liver:volume_ml", "organs_csv:liver:suv_mean",
              "organs_csv:heart:volume_ml", "organs_csv:kidneys:volume_ml",
              "manifest:out_of_range"),
)
