"""CPDM (Nguyen et al. 2024, arXiv:2410.21932): CT -> synthetic PET with a latent Brownian bridge.

- ``networks.py``     the bridge denoiser (BridgeUNet) and the card specs of the three networks;
- ``intensities.py``  CT and PET scalings to network units, the M_mu condition, tissue classes;
- ``transforms.py``   working-grid crops/pads and the CT-domain augmentation of the recipe;
- ``latents.py``      2.5D stacks and latent conditions, per case.

The Brownian bridge itself is ``PETDiffusionLib.diffusion.bridge``.
"""
