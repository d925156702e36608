"""What the dual-timepoint-ac task declares (no torch: ``petdiffusion spec`` and the Slicer panel
read this at once).

Input contract (docs/PHYSICS.md §4.1): the delayed NAC PET is the scanner's reconstruction without
attenuation (and scatter) correction in SUV units, i.e. its Bq/mL times the usual SUVbw factor of
the delayed scan (decayed dose, body weight), with no rescaling toward any AC image; the CT is the
first scan's, in HU on its own grid; the patient may have moved between the scans (centimetres,
a few degrees). The output is the delayed AC PET in SUVbw on the NAC's grid, marked synthetic.
"""
from __future__ import annotations

from PETDiffusionLib.tasks.base import ImageInput, Output, Parameter, TaskSpec

MODEL_ID = "stmdiff-phantom-2d"
DEFAULT_K = 2
"""CT slices matched per NAC slice: STMDiff §4 (second ablation) found k = 2 best."""
DEFAULT_STEPS = 2
"""DDIM (eta 0, the ODE sampler of STMDiff §3) steps, from the measured quality-versus-steps curve
(model card ``evaluation.steps_curve``; runs/stmdiff/eval): on 2 held-out phantoms the body RMSE was
1.102 / 1.097 / 1.096 / 1.094 / 1.094 SUV at 2 / 5 / 10 / 20 / 50 steps, so the fewest steps within
2 % of the best is 2 (the x0-predicting network needs few steps)."""

LESION_SUV_THRESHOLD = 2.5
"""Hot regions of the first AC PET for the retention-index table: SUV >= 2.5, the classic FDG
malignancy cut-off that dual-time-point studies report retention indices against (PHYSICS.md §5)."""
MATCH_RADIUS_MM = 30.0
"""Search radius for a first-scan region's SUVmax in the delayed image: the largest simulated
inter-scan shift (25 mm along z, phantom/motion.py, PHYSICS.md §4.1) plus a voxel."""

SPEC = TaskSpec(
    id="dual-timepoint-ac",
    title="Dual-time-point attenuation correction without a second CT (STMDiff)",
    paper="STMDiff, Li et al., spatiotemporal matching diffusion for dual-time-point PET/CT",
    description="Attenuation-corrects the delayed PET of a dual-time-point study with the first "
                "scan's CT. Default method physics: STMDiff's contrastive matching network pairs "
                "the delayed NAC slices with first-scan CT slices (the couch shift and a "
                "same-patient check), the CT is registered to the NAC (a translation, mutual "
                "information) and the NAC is attenuation-corrected by reprojection on its own "
                "grid. Method stmdiff: the paper's latent diffusion conditioned on the k matched "
                "CT slices and the NAC, on the model's working grid. The output is SYNTHETIC: a "
                "research image, never a substitute for a measured AC PET.",
    inputs=(
        ImageInput("nac", "nac", "SUVbw", "delayed NAC PET in SUV units (the scanner's NAC "
                   "reconstruction x the SUVbw factor of the delayed scan; no rescaling)"),
        ImageInput("ct", "ct", "HU", "CT of the first scan in Hounsfield units, covering the "
                   "delayed PET's axial range"),
        ImageInput("first_pet", "pet", "SUVbw", "first-scan AC PET in SUVbw (optional): the "
                   "retention-index table per hot region", required=False),
    ),
    parameters=(
        Parameter("method", str, "physics", "physics: STMDiff's slice matching, CT registration and "
                  "reprojection attenuation correction on the NAC's own grid (validated on real PET); "
                  "stmdiff: the paper's latent diffusion on the working grid", choices=("physics", "stmdiff")),
        Parameter("scatter_fraction", str, "auto", "physics: scatter fraction the NAC keeps, 0..0.6; auto = "
                  "0 when its DICOM CorrectedImage lists SCAT, else 0.35 (a NAC keeps its scatter)"),
        Parameter("k", int, DEFAULT_K, "CT slices matched per NAC slice (the model must be trained "
                  "for this k; k = 2 ships)", minimum=1, maximum=5),
        Parameter("steps", int, DEFAULT_STEPS, "DDIM steps (of 1000 trained)", minimum=2, maximum=1000),
        Parameter("samples", int, 1, "number of samples; above 1 the task also writes the per-voxel "
                  "standard deviation (uncertainty.nii.gz)", minimum=1, maximum=32),
        Parameter("seed", int, 0, "random seed (same seed, same device: same output)", minimum=0),
        Parameter("lesion_threshold", float, LESION_SUV_THRESHOLD, "SUV threshold of the hot regions "
                  "of the first AC PET for the retention-index table", minimum=0.5, maximum=50.0),
    ),
    outputs=(
        Output("pet_ac", "pet_ac.nii.gz", "volume", "delayed attenuation-corrected PET (SUVbw) on the "
               "NAC grid, mean of the samples", units="SUVbw", synthetic=True),
        Output("uncertainty", "uncertainty.nii.gz", "volume", "per-voxel standard deviation of the "
               "samples (SUVbw), when samples > 1", units="SUVbw", synthetic=True, optional=True),
        Output("retention_csv", "retention_index.csv", "table", "per hot region of the first AC PET: "
               "SUVmax early and delayed, retention index (%), when first_pet is given",
               optional=True, synthetic=True),
    ),
    model_id=MODEL_ID,
    slicer_module="DualTimePointAC",
    headline=("manifest:method", "manifest:estimated_axial_shift_mm", "manifest:k"),
)
