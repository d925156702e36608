"""Training: the Trainer (``loop.py``), datasets over phantom cohorts and NIfTI study folders
(``datasets.py``), and one recipe per task (``recipes/<task_module>.py``, run by
``petdiffusion train <task> --config FILE``)."""
