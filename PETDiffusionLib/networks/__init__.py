"""Network builders. MONAI first (``DiffusionModelUNet``, ``AutoencoderKL``, ``VQVAE``); what MONAI
lacks lives in one module per method (``amdiff.py``, ``cpdm.py``, ...).

Every network a model card names is built from ``{"class": dotted path, "args": {...}}`` by
:func:`PETDiffusionLib.models.card.build_network`; ``builders.py`` writes those specs for the MONAI
networks so that a recipe and its card agree on the constructor arguments.
"""
