"""Schedules and samplers shared by every task (issue 5).

- ``ddpm``: conditional DDPM with DDPM / DDIM / DPM-Solver++(2M) samplers and start-from-noised-input
- ``bridge``: Brownian-bridge diffusion (BBDM / CPDM)
- ``edm``: EDM preconditioning, Karras sigmas, Heun sampler, residual super-resolution (TotalGen)
- ``windows``: 2.5D slice stacks and 3D sliding windows applied at every denoising step
- ``sampling``: SampleResult (N samples -> mean and per-voxel std), seeded noise
"""
