"""What the ct-to-pet task declares: its inputs, parameters and outputs (no torch: ``petdiffusion
spec`` and the Slicer panel read this at once)."""
from __future__ import annotations

from PETDiffusionLib.tasks.base import ImageInput, Output, Parameter, TaskSpec

MODEL_ID = "cpdm-phantom-2p5d"
DEFAULT_STEPS = 5
"""Bridge steps at inference, chosen from the measured quality-versus-steps curve (model card
``evaluation.steps_curve``; runs/ct_to_pet/evaluation_curve.json): on 2 held-out phantoms the MAE
was 0.272 / 0.275 / 0.274 / 0.275 / 0.277 SUV at 5 / 10 / 20 / 50 / 200 steps, so the fewest steps
within 2 % of the best MAE is 5. CPDM itself samples 200 of 1000 steps (§5.1)."""

SPEC = TaskSpec(
    id="ct-to-pet",
    title="CT to synthetic PET (CPDM)",
    paper="CPDM, Nguyen et al. 2024, arXiv:2410.21932",
    description="Synthesizes an FDG PET in SUVbw from a CT with a latent Brownian bridge guided by "
                "an attention map (likely high-uptake regions) and an attenuation map exp(-mu). "
                "The output is SYNTHETIC: a research image, never a substitute for a measured PET.",
    inputs=(
        ImageInput("ct", "ct", "HU", "CT volume in Hounsfield units (NIfTI/NRRD file or DICOM folder)"),
        ImageInput("organs", "labels", None, "organ label map (optional): organ SUV table and report",
                   required=False, is_label=True),
    ),
    parameters=(
        Parameter("kvp", float, None, "CT tube voltage in kVp for HU->mu; default: the DICOM KVP tag "
                  "(0018,0060), else 120 with a warning", minimum=70.0, maximum=150.0),
        Parameter("steps", int, DEFAULT_STEPS, "Brownian-bridge sampling steps (of 1000 trained)",
                  minimum=2, maximum=1000),
        Parameter("samples", int, 1, "number of samples; above 1 the task also writes the per-voxel "
                  "standard deviation (uncertainty.nii.gz)", minimum=1, maximum=32),
        Parameter("seed", int, 0, "random seed (same seed, same device: same output)", minimum=0),
    ),
    outputs=(
        Output("pet_synthetic", "pet_synthetic.nii.gz", "volume",
               "synthetic PET (SUVbw) on the CT grid, mean of the samples", units="SUVbw", synthetic=True),
        Output("attention_map", "attention_map.nii.gz", "volume",
               "CPDM attention map M_sigma (probability of high uptake) on the CT grid",
               units="probability", synthetic=True),
        Output("attenuation_map", "attenuation_map.nii.gz", "volume",
               "CPDM attenuation map M_mu = exp(-mu at 511 keV per cm) on the CT grid", units="exp(-mu)"),
        Output("uncertainty", "uncertainty.nii.gz", "volume",
               "per-voxel standard deviation of the samples (SUVbw), when samples > 1",
               units="SUVbw", synthetic=True, optional=True),
        Output("organs_csv", "organs.csv", "table", "organ SUV table of the synthetic PET",
               optional=True, synthetic=True),
        Output("report", "report.pdf", "report", "PDF report (synthetic banner on every page)",
               optional=True, synthetic=True),
        Output("report_json", "report.json", "json", "the report's content as JSON (with organs)",
               optional=True, synthetic=True),
        Output("summary_json", "summary.json", "json", "quantification summary of the synthetic PET "
               "(with organs)", optional=True, synthetic=True),
    ),
    model_id=MODEL_ID,
    slicer_module="CTtoPETSynthesis",
    # summary.csv of `petdiffusion batch` (batch/headline.py): the kVp used for HU->mu and, when an
    # organ map was given, the synthetic PET's SUVmean in the PERCIST reference regions (liver,
    # blood pool; Wahl 2009) and the spleen
    headline=("manifest:kvp", "organs_csv:liver:suv_mean", "organs_csv:aorta:suv_mean",
              "organs_csv:spleen:suv_mean"),
)
