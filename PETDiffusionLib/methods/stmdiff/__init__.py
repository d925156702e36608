"""STMDiff (Li et al., dual-time-point PET/CT): spatiotemporal matching of delayed PET slices to the
first scan's CT slices by contrastive latents, and latent diffusion for attenuation correction."""
