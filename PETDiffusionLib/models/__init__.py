"""Model folders (card.json + model.safetensors), the registry of shipped models, integrity checks.

Shipped models are the sub-folders ``PETDiffusionLib/models/<model-id>/``; see ``card.py`` for the
card format and ``registry.py`` for save/load/list.
"""
