"""Cohorts at scale: ``petdiffusion batch`` runs one task over a cohort CSV (docs/SCALE.md).

- cohort.py: the cohort CSV, checked against the task's spec; which studies are already complete
- worker.py: a worker (the model loaded once, ``run_task`` per study, failures isolated)
- ray_engine.py: the workers as Ray actors on a local instance or a cluster (Ray optional)
- summary.py: DIR/summary.csv, rewritten atomically as studies finish
- headline.py: each task's headline figures (``TaskSpec.headline``) read from a study's files
- run.py: ``run_batch``, the whole command (skip, pre-check, engine, summary, progress)
"""
