"""Task restore: low-dose PET (SUVbw) + an MR T1 or CT guide -> standard-dose PET with MFdiff
(Zhang, Chen et al., "Supervise-assisted multi-modality fusion diffusion model for PET
restoration"; seed ``../shared/seeds/MFdiff_low_dose_restoration.txt``).

Parts (docs/ARCHITECTURE.md): ``spec.py`` (SPEC, no torch), ``pipeline.py`` (check_inputs,
load_model, predict, report), ``evaluate.py``, ``demo.py``, ``bench.py``. The networks are in
``PETDiffusionLib/methods/mfdiff/``; the two-stage recipe is ``training/recipes/restore.py``.
This file imports nothing.
"""
