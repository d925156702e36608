"""Task ct-to-pet: CT (HU) -> synthetic PET (SUVbw) with CPDM (Nguyen et al. 2024, arXiv:2410.21932).

Parts (docs/ARCHITECTURE.md): ``spec.py`` (SPEC, no torch), ``pipeline.py`` (check_inputs,
load_model, predict, report), ``evaluate.py``, ``demo.py``, ``bench.py``. The networks, scalings and
transforms are CPDM's own, in ``PETDiffusionLib/methods/cpdm/``; the recipe that trains the model
is ``PETDiffusionLib/training/recipes/ct_to_pet``. This file imports nothing.
"""
