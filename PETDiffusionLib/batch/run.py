"""``petdiffusion batch``: run one task over a cohort, resumable, each study isolated.

1. Read and check the cohort CSV against the task's spec (batch/cohort.py): a bad table stops
   everything before any study runs, with the file, line and column in the message.
2. Skip every study whose folder ``DIR/<id>/`` already holds a complete manifest (batch/cohort.py
   ``complete_manifest``); fail at once, alone, every study whose image files do not exist.
3. Run the rest on the chosen engine: ``local`` (one worker in this process) or ``ray``
   (batch/ray_engine.py); each study writes into ``DIR/<id>/`` exactly what ``petdiffusion run``
   writes (tasks/runner.py), the model loaded once per worker.
4. ``DIR/summary.csv`` (batch/summary.py) is rewritten as each study finishes.

The batch succeeds (:attr:`BatchResult.ok`) when every study is ``ok`` or ``skipped``.
"""
from __future__ import annotations

import json
import logging
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from tqdm import tqdm

from PETDiffusionLib.batch import headline
from PETDiffusionLib.batch.cohort import Study, complete_manifest, missing_inputs, read_cohort
from PETDiffusionLib.batch.ray_engine import run_ray
from PETDiffusionLib.batch.summary import SUMMARY, SummaryTable
from PETDiffusionLib.batch.worker import StudyWorker
from PETDiffusionLib.errors import InputError
from PETDiffusionLib.tasks.registry import task_spec

log = logging.getLogger(__name__)

ENGINES = ("local", "ray")


@dataclass
class BatchResult:
    summary: Path
    counts: dict[str, int]
    seconds: float
    engine: str
    workers: list[dict] = field(default_factory=list)   # each worker's info (name, model load s)
    engine_info: dict[str, Any] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return self.counts.get("failed", 0) == 0


class BatchProgress:
    """Progress over studies: a tqdm bar (``bar``), one JSON event per line (``json``, the
    progress.py protocol plus ``study`` and ``worker`` events) or nothing (``none``)."""

    def __init__(self, mode: str, total: int, stream: IO[str] | None = None):
        if mode not in ("bar", "json", "none"):
            raise ValueError(f"progress mode must be bar, json or none, not {mode!r}")
        self.mode, self.total, self.done = mode, total, 0
        self.stream = stream or sys.stdout
        self._bar = None
        if mode == "bar":
            self._bar = tqdm(total=total, unit="study", file=sys.stderr, leave=True)

    def _emit(self, event: dict) -> None:
        if self.mode == "json":
            self.stream.write(json.dumps(event, default=str) + "\n")
            self.stream.flush()

    def worker(self, info: dict) -> None:
        self._emit({"event": "worker", **info})
        if self._bar is not None:
            self._bar.write(f"worker {info['worker']}: model loaded in {info['model_seconds']} s",
                            file=sys.stderr)

    def study(self, row: dict) -> None:
        self.done += 1
        self._emit({"event": "study", "id": row["id"], "status": row["status"],
                    "worker": row.get("worker") or None, "seconds": row.get("seconds"),
                    "error": row.get("error") or None, "done": self.done, "total": self.total})
        self._emit({"event": "progress", "stage": "batch",
                    "fraction": round(self.done / max(self.total, 1), 4),
                    "message": f"{row['id']} {row['status']} ({self.done}/{self.total})"})
        if self._bar is not None:
            self._bar.set_postfix_str(f"{row['id']} {row['status']}")
            self._bar.update(1)

    def result(self, result: BatchResult) -> None:
        if self._bar is not None:
            self._bar.close()
        self._emit({"event": "result", "summary": str(result.summary.resolve()),
                    "counts": result.counts, "seconds": result.seconds, "engine": result.engine})


def run_local(task_id: str, studies: list[Study], out_dir: str, on_row, on_worker, *,
              device: str | None = None, model_path: str | None = None) -> dict[str, Any]:
    """``--engine local``: one worker in this process (machines without Ray)."""
    worker = StudyWorker(task_id, device, model_path)
    on_worker(worker.info())
    for study in studies:
        on_row(worker.run(study.to_dict(), out_dir))
    return {"workers": 1, "device": device or "auto"}


def run_batch(task_id: str, cohort_csv: str | Path, out_dir: str | Path, engine: str = "local", *,
              address: str | None = None, workers: int | None = None, device: str | None = None,
              model_path: str | None = None, cpus_per_worker: float = 1.0,
              gpus_per_worker: float | None = None, progress: str = "none",
              stream: IO[str] | None = None) -> BatchResult:
    t0 = time.monotonic()
    if engine not in ENGINES:
        raise InputError(f"--engine {engine}: choose one of {', '.join(ENGINES)}")
    if address and engine != "ray":
        raise InputError("--address joins a Ray cluster: it needs --engine ray")
    if workers is not None and workers < 1:
        raise InputError(f"--workers {workers}: must be at least 1")
    if engine == "local" and workers not in (None, 1):
        raise InputError(f"--workers {workers}: --engine local runs one worker in this process; "
                         "use --engine ray for several")
    if cpus_per_worker <= 0:
        raise InputError(f"--cpus-per-worker {cpus_per_worker:g}: must be above 0")
    spec = task_spec(task_id)
    studies = read_cohort(cohort_csv, spec)
    out_dir = Path(out_dir).resolve()
    table = SummaryTable(out_dir / SUMMARY, [s.id for s in studies], headline.columns(spec))
    bar = BatchProgress(progress, len(studies), stream)
    worker_infos: list[dict] = []

    def on_row(row: dict) -> None:
        row["engine"] = engine
        table.add(row)
        bar.study(row)

    def on_worker(info: dict) -> None:
        worker_infos.append(info)
        bar.worker(info)

    to_run: list[Study] = []
    for study in studies:
        folder = out_dir / study.id
        manifest = complete_manifest(folder, task_id)
        if manifest is not None:
            try:
                figures = headline.read(spec, folder, manifest)
            except (OSError, ValueError) as exc:  # an output damaged since: run the study again
                log.warning("study %s: its outputs cannot be read (%s); running it again", study.id, exc)
            else:
                on_row({"id": study.id, "status": "skipped", **figures})
                continue
        missing = missing_inputs(study)
        if missing:
            on_row({"id": study.id, "status": "failed", "seconds": 0.0, "error": missing})
            continue
        to_run.append(study)
    log.info("batch %s: %d studies, %d already complete, %d to run on %s", task_id, len(studies),
             table.counts()["skipped"], len(to_run), engine)

    engine_info: dict[str, Any] = {}
    if to_run:
        if engine == "local":
            engine_info = run_local(task_id, to_run, str(out_dir), on_row, on_worker,
                                    device=device, model_path=model_path)
        else:
            engine_info = run_ray(task_id, to_run, str(out_dir), on_row, on_worker, device=device,
                                  model_path=model_path, workers=workers, address=address,
                                  cpus_per_worker=cpus_per_worker, gpus_per_worker=gpus_per_worker,
                                  quiet_workers=progress == "json")
    table.write()
    result = BatchResult(table.path, table.counts(), round(time.monotonic() - t0, 2), engine,
                         worker_infos, engine_info)
    bar.result(result)
    return result
