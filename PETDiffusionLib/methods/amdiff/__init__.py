"""AMDiff (Xia et al., anatomically and metabolically informed diffusion for unified denoising and
segmentation in low-count PET): ``networks`` (f_den, f_rev, f_seg, the SUV normalisation),
``losses`` (Eq. 3-11) and ``cases`` (the cohort arrays and the 2.5D slice sampler that the task's
evaluation and the training recipe share)."""
