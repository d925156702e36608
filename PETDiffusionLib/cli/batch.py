"""`petdiffusion batch TASK --inputs COHORT.csv --out DIR [--engine local|ray] [--address ADDR]
[--workers N] [--device D]`: one task over a cohort (docs/SCALE.md).

COHORT.csv has an ``id`` column, one column per image input of the task (``petdiffusion spec TASK``
lists them: pet, ct, organs, ...) and optional parameter columns; relative paths are relative to
the CSV's folder. Each study writes into DIR/<id>/ exactly what ``petdiffusion run`` writes;
DIR/summary.csv has one row per study (id, status ok|skipped|failed, seconds, engine, worker,
error and the task's headline figures). Studies whose folder holds a complete manifest are
skipped, so the same command resumes an interrupted batch. Exit status: 0 when every study is ok
or skipped, 1 when any failed, 2 for a bad cohort table or option.
"""
from __future__ import annotations

import argparse

from PETDiffusionLib.tasks.registry import task_ids


def register(sub) -> None:
    p = sub.add_parser("batch", help="run a task over a cohort CSV (local or on a Ray cluster)",
                       description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("task", choices=task_ids())
    p.add_argument("--inputs", required=True, metavar="COHORT.csv",
                   help="cohort table: id, one column per task input, optional parameter columns")
    p.add_argument("--out", required=True, metavar="DIR", help="output folder (DIR/<id>/, DIR/summary.csv)")
    p.add_argument("--engine", choices=["local", "ray"], default="local",
                   help="local: one worker in this process; ray: Ray workers (pip install .[cluster])")
    p.add_argument("--address", default=None,
                   help="Ray cluster to join (HOST:PORT of its head, or auto); default: start a "
                        "private Ray instance on this machine (127.0.0.1)")
    p.add_argument("--workers", type=int, default=None,
                   help="Ray workers, each loading the model once (default: as many as the "
                        "cluster's CPUs or GPUs allow); local: 1")
    p.add_argument("--cpus-per-worker", type=float, default=1.0,
                   help="CPUs each Ray worker declares (default 1)")
    p.add_argument("--gpus-per-worker", type=float, default=None,
                   help="GPUs each Ray worker declares (default: 1 with --device cuda, or auto on "
                        "a cluster with GPUs; else 0)")
    p.add_argument("--device", default="auto", help="auto (CUDA, else MPS, else CPU), cpu, cuda, mps")
    p.add_argument("--model", default=None, help="a model folder of your own (card.json + model.safetensors)")
    p.add_argument("--progress", choices=["bar", "json", "none"], default="bar",
                   help="a bar over studies; json: one event per line (study, worker, progress, result)")
    p.set_defaults(func=_batch)


def _batch(args) -> int:
    # lazy on purpose: the batch package imports torch (via the task runner); `petdiffusion --help`
    # builds every subcommand's parser and must stay fast
    from PETDiffusionLib.batch.run import run_batch
    result = run_batch(args.task, args.inputs, args.out, args.engine, address=args.address,
                       workers=args.workers, device=args.device, model_path=args.model,
                       cpus_per_worker=args.cpus_per_worker, gpus_per_worker=args.gpus_per_worker,
                       progress=args.progress)
    if args.progress != "json":
        c = result.counts
        print(f"{c['ok']} ok, {c['skipped']} skipped, {c['failed']} failed in {result.seconds:.1f} s "
              f"on {result.engine} ({len(result.workers)} worker(s)); wrote {result.summary}")
    return 0 if result.ok else 1
