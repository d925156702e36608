"""What the denoise-segment task (AMDiff) declares: inputs, parameters, outputs, model, Slicer
module, and the plausibility limits its input checks use. No torch: ``petdiffusion spec`` and the
Slicer panel read this at once."""
from __future__ import annotations

from PETDiffusionLib.tasks.base import ImageInput, Output, Parameter, TaskSpec

# issue 13: the native-resolution denoiser trained on real PET (real validation, the card's
# evaluation_real: whole-body body NRMSE 13 % / 10 % below the tuned Gaussian at 10 % / 5 % counts;
# amdiff-sts-2p5d, the default before, was worse than the Gaussian there). "amdiff-sts-2p5d" and
# "amdiff-phantom-2p5d" (working-grid models) stay shipped.
MODEL_ID = "amdiff-native-2p5d"

# The plausible SUV range of the inputs is io/checks.py's (docs/PHYSICS.md §7), shared by every task.
CT_AIR_HU = -1000.0                 # PHYSICS.md §5: air, the pad value of CT crops
MIN_INPLANE_VOXELS = 16     # at the working spacing: the segmenter down-samples by 8
LESION_PROB_THRESHOLD = 0.5     # argmax of two classes; used when a card has no calibrated value

SPEC = TaskSpec(
    id="denoise-segment",
    title="Denoise and segment low-count PET (AMDiff)",
    paper="Xia et al., AMDiff: anatomically and metabolically informed diffusion for unified "
          "denoising and segmentation in low-count PET imaging",
    description="Low-count (low-dose or short) PET in SUVbw -> denoised PET, lesion and organ "
                "masks, lesion and organ tables (SUVmax/mean/peak, MTV, TLG) and a PDF report. "
                "The denoised PET is synthetic.",
    inputs=(
        ImageInput("pet", "pet", "SUVbw", "low-count PET in SUVbw (file or DICOM folder)"),
        ImageInput("ct", "ct", "HU", "CT of the same study in HU (optional; helps organ masks)",
                   required=False),
    ),
    parameters=(
        Parameter("steps", int, 0, "diffusion sampling steps; 0 = the model card's default, "
                  "chosen from its measured quality-versus-steps curve", 0, 250),
        Parameter("sampler", str, "ddim", "sampler", choices=("ddim", "ddpm", "dpmpp2m")),
        Parameter("samples", int, 1, "number of diffusion samples N; N > 1 averages them and "
                  "writes their per-voxel standard deviation as an uncertainty map", 1, 16),
        Parameter("seed", int, 0, "random seed (same seed, same output on the same device)", 0),
        Parameter("start_fraction", float, 0.0, "0 = the model card's default; 1 = start from pure "
                  "noise; in between: start from the low-count input noised to this fraction "
                  "of the diffusion steps", 0.0, 1.0),
        Parameter("lesion_threshold", float, 0.0,
                  "lesion probability above which a voxel is lesion; 0 = the model card's value "
                  "(calibrated on its validation cases)", 0.0, 0.95),
        Parameter("lesion_min_ml", float, 0.2, "drop predicted lesions smaller than this (mL)",
                  0.0, 100.0),
        Parameter("keep_physiological", bool, False, "keep lesion components the physiological "
                  "uptake rules would drop (kidney, bladder, ureter, brain, myocardium; "
                  "quant/physiology.py)"),
    ),
    outputs=(
        Output("pet_denoised", "pet_denoised.nii.gz", "volume", "denoised PET (synthetic)",
               units="SUVbw", synthetic=True),
        Output("lesions", "lesions.nii.gz", "labelmap", "lesion mask (1 = lesion)",
               label_names="lesion_labels"),
        Output("organs", "organs.nii.gz", "labelmap", "organ label map", label_names="organ_labels"),
        Output("lesions_csv", "lesions.csv", "table", "one row per lesion: SUVmax/mean/peak, MTV, TLG",
               optional=True),
        Output("organs_csv", "organs.csv", "table", "one row per organ: SUVmean/max, volume"),
        Output("summary_json", "summary.json", "json", "totals (TMTV, TTLG, lesion count)"),
        Output("report_pdf", "report.pdf", "report", "PDF report (synthetic banner)"),
        Output("report_json", "report.json", "json", "the report's content as JSON"),
        Output("uncertainty", "uncertainty.nii.gz", "volume",
               "per-voxel standard deviation of the denoised PET over N samples (samples > 1)",
               units="SUVbw", synthetic=True, optional=True),
    ),
    model_id=MODEL_ID,
    slicer_module="PETDenoiseSegment",
    # summary.csv of `petdiffusion batch` (batch/headline.py): the clinical metrics AMDiff
    # quantifies from low-count inputs (MTV, TLG, organ SUVmean; AMDiff Sec. 4.4), the organs
    # being the PERCIST reference regions (liver, blood pool; Wahl 2009) and the spleen
    headline=("summary_json:tmtv_ml", "summary_json:ttlg", "summary_json:lesion_count",
              "organs_csv:liver:suv_mean", "organs_csv:aorta:suv_mean",
              "organs_csv:spleen:suv_mean"),
)
