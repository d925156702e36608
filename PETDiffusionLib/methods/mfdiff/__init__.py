"""MFdiff (Zhang, Chen et al., "Supervise-assisted multi-modality fusion diffusion model for PET
restoration"; seed text ``../shared/seeds/MFdiff_low_dose_restoration.txt``): the multi-modality
feature fusion module (Sec. 3.1), the conditional diffusion U-Net (Sec. 3.2), the M-UNet baseline
of the ablation (Table 5), intensity scalings and the 2.5D case sampler of the two training stages
(Sec. 3.3)."""
