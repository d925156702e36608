"""Task dual-timepoint-ac: delayed NAC PET + the first scan's CT -> delayed attenuation-corrected PET
(STMDiff). Parts: spec, pipeline, evaluate, demo, bench (tasks/registry.py)."""
