"""The fixed real-data split of denoise-segment (issue 13), at library level so that training and
evaluation read the same rules (tasks never import training; training imports this).

- Sarcoma crops (``../shared/data/petct_sts_more``): every third STS id is "validation", the rest
  "finetune" (the rule of issue 6); STS_001 and STS_002 stay out of every training.
- The whole-body study petwb_sts001 (one patient): an axial split keeps a real whole-body region
  apart. Array z index 0 is inferior (pelvis and thighs, the bladder near slices 40-80); slices from
  :data:`PETWB_VALIDATION_FROM_Z` up (torso and head: heart, liver, kidneys, brain) are validation,
  the slices below may train.
"""
from __future__ import annotations

EXCLUDED = ("STS_001", "STS_002")     # issue 6: the two petct_sts cases stay out of fine-tuning
VALIDATION_EVERY = 3                  # every third case (by id) is validation (issue 6)
PETWB_VALIDATION_FROM_Z = 134         # petwb_sts001 slices >= 134 of 267 (the superior half)


def split_of(case_id: str) -> str:
    """``validation`` for every third STS id (STS_015, STS_018, ...), else ``finetune``."""
    n = int(case_id.split("_")[-1])
    return "validation" if n % VALIDATION_EVERY == 0 else "finetune"
