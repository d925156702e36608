"""Task ``denoise-segment`` (AMDiff): low-count PET -> denoised PET, lesion and organ masks, tables.

Parts (tasks/registry.py): ``spec`` (SPEC, no torch), ``pipeline`` (check_inputs, load_model,
predict, report), ``evaluate`` (``petdiffusion evaluate denoise-segment --mode ...``; the studies in
``studies``), ``demo``, ``bench``. AMDiff's networks, losses and cohort readers live in
:mod:`PETDiffusionLib.methods.amdiff`; its training recipe in
:mod:`PETDiffusionLib.training.recipes.denoise_segment`.
"""
