"""Task synthesize (TotalGen, Yoon et al. 2025): age, sex, height and weight -> a synthetic
whole-body (clavicle-to-sacrum) FDG PET/CT with organ labels, by a cascade of two 3D EDM models."""
