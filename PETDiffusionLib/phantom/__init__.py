"""Procedural demographic PET/CT/MR phantoms with organ and lesion labels (issue 4).

``ORGAN_LABELS`` is the organ class map {id: name} written to every case's ``organs.nii.gz``.
"""
from PETDiffusionLib.phantom.anatomy import ORGAN_LABELS

__all__ = ["ORGAN_LABELS"]
