"""Shared network parts. MONAI first (``DiffusionModelUNet``, ``AutoencoderKL``): ``builders.py``
writes their card specs; ``blocks.py`` holds the timestep embedding and time-conditioned residual
blocks that several methods share. Each paper's own networks live with its method
(``PETDiffusionLib/methods/<method>/networks.py``).

Every network a model card names is built from ``{"class": dotted path, "args": {...}}`` by
:func:`PETDiffusionLib.models.card.build_network`, the one builder, with its class allow-list.
"""
