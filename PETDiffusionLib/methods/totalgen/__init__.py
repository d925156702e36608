"""TotalGen (Yoon et al. 2025): whole-body PET/CT with organ labels from demographics, a cascade of
two 3D EDM diffusion models (seed: TotalGen_cascaded_demographics_synthesis).

- ``data.py``         the simulator's demographic population cropped clavicle-to-sacrum, 4x stratified
                      sub-sampling (64 low-resolution volumes per subject);
- ``intensities.py``  CT / PET scalings, demographic and position channels;
- ``networks.py``     the small 3D EDM U-Net (stage 1 global, stage 2 residual super-resolution);
- ``synthesis.py``    the cascade at inference: stage 1 Heun sampling, stage 2 windowed residual
                      super-resolution with Gaussian blending, organ labels from the joint channels.

EDM preconditioning, Karras sigmas, the Heun sampler and the residual super-resolution are
``PETDiffusionLib.diffusion.edm``; the 3D windows ``PETDiffusionLib.diffusion.windows``.
"""
