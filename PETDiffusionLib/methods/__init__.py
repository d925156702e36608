"""Method-specific code, one package per published method (``amdiff/``, ``cpdm/``, ...): the
networks MONAI lacks, the intensity scalings, transforms and losses a method's task pipeline and
training recipe share. Tasks (``tasks/``) and recipes (``training/recipes/``) import from here;
nothing here imports tasks or training."""
