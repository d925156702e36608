"""What the restore task (MFdiff) declares: inputs, parameters, outputs, model and Slicer module,
and the limits of its guide checks. No torch: ``petdiffusion spec`` and the Slicer panel read this."""
from __future__ import annotations

from PETDiffusionLib.tasks.base import ImageInput, Output, Parameter, TaskSpec

MODEL_ID = "mfdiff-2p5d"
"""The shipped default (MR T1 or CT guide, 4 x 4 x 5 mm working grid)."""
CT_MODEL_ID = "mfdiff-native-2p5d"
"""The shipped default for a CT guide when no model is named: MFdiff on the PET's own grid, trained
on real PET/CT (CT guide only; its card's real validation, README "restore")."""
DEFAULT_STEPS = 0        # 0 = the model card's inference.steps (from its measured steps curve)
DEFAULT_START = 0.0      # 0 = the model card's inference.start_fraction
MIN_GUIDE_OVERLAP = 0.5
"""Fraction of the PET's body (SUV above 5 % of its 99th percentile) that the guide's field of view
must cover; below it the guide is another study or another part of the body (issue 15)."""
MR_AS_CT_MIN_HU = -500.0
"""A CT's 1st percentile is air, below -500 HU (io/checks.CT_AIR_MAX_HU); an MR in arbitrary units
never goes below 0."""

SPEC = TaskSpec(
    id="restore",
    title="Low-dose PET restoration with an MR or CT guide (MFdiff)",
    paper="Zhang, Chen et al., MFdiff: supervise-assisted multi-modality fusion diffusion model for "
          "PET restoration",
    description="Low-dose (or short-frame) PET in SUVbw plus the same patient's T1 MR or CT -> a "
                "restored standard-dose PET in SUVbw on the PET's grid, with a per-voxel standard "
                "deviation over the samples. The guide may come on its own grid and field of view; "
                "it is resampled onto the PET. The restored PET is SYNTHETIC (a model output).",
    inputs=(
        ImageInput("pet", "pet", "SUVbw", "low-dose PET in SUVbw (file or DICOM folder)"),
        ImageInput("mr", "mr", None, "T1-weighted MR of the same patient (give --mr or --ct)",
                   required=False),
        ImageInput("ct", "ct", "HU", "CT of the same patient in HU (give --mr or --ct)",
                   required=False),
    ),
    parameters=(
        Parameter("steps", int, DEFAULT_STEPS, "DDIM steps from the noised low-dose input (0: the "
                  "model card's default, chosen from its steps curve)", minimum=0, maximum=1000),
        Parameter("start_fraction", float, DEFAULT_START, "noise level the low-dose input is "
                  "noised to, as a fraction of T (0: the card's default)", minimum=0.0, maximum=1.0),
        Parameter("samples", int, 2, "number of samples: the output is their mean, "
                  "pet_restored_sd their per-voxel standard deviation (2: the fewest that give "
                  "one; each sample costs one sampling run)", minimum=1, maximum=32),
        Parameter("seed", int, 0, "random seed (same seed, same device: same output)", minimum=0),
    ),
    outputs=(
        Output("pet_restored", "pet_restored.nii.gz", "volume",
               "restored standard-dose PET (SUVbw) on the PET's grid, mean of the samples",
               units="SUVbw", synthetic=True),
        Output("pet_restored_sd", "pet_restored_sd.nii.gz", "volume",
               "per-voxel standard deviation of the samples (SUVbw); zero for one sample",
               units="SUVbw", synthetic=True),
        Output("summary_json", "restore.json", "json",
               "guide used, overlap, inference settings and whole-body SUV figures", optional=True,
               synthetic=True),
    ),
    model_id=MODEL_ID,
    slicer_module="LowDosePETRestoration",
    headline=("manifest:guide", "summary_json:body_suvmean_input", "summary_json:body_suvmean_restored"),
)
